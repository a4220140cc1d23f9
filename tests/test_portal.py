"""The therapist portal: enrolment, passphrase and TOTP, throttling, separation from the onion."""

from __future__ import annotations

import dataclasses
import re
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pyotp
import pytest

from stillroom.crypto import kdf, passphrase
from stillroom.webapp.app import create_portal_app
from stillroom.webapp.booking import Appointment
from stillroom.webapp.portal.schedule import home_section
from stillroom.webapp.security import SECURITY_HEADERS
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import PassphraseNotGeneratedError, enrol

from support import (
    NASTY,
    TOTP_SECRET,
    AuthActions,
    TherapistActions,
    every_rule_url,
    form_fields,
    rows,
    shown_passphrase,
)


def test_enrolment_gives_a_passphrase_sets_totp_and_wraps_a_key_pair(therapist, settings):
    token = therapist.add("Anna")
    response = therapist.enrol(token)
    assert response.status_code == 302
    assert "/en/?done=enrolled" in response.location
    db = connect(settings.database_path)
    try:
        row = db.execute(
            "SELECT slot, public_key, wrapped_secret_key, totp_secret FROM therapists"
        ).fetchone()
    finally:
        db.close()
    slot, public_key, wrapped, totp_secret = row
    assert slot is not None and totp_secret is None  # the TOTP secret is inside the wrap
    assert len(public_key) == 32 and len(wrapped) > 32
    passphrase = therapist.passphrases["Anna"]
    assert len(passphrase.split()) >= 7
    everything = b"".join(path.read_bytes() for path in settings.data_dir.iterdir())
    for secret in (passphrase.encode(), therapist.secret.encode()):
        assert secret not in everything  # neither the passphrase nor the TOTP secret in clear


@pytest.mark.parametrize("languages", [("de", "en"), ("cs",), ("pt", "es"), ("es",)])
def test_the_passphrase_comes_from_the_list_of_the_therapists_first_language(therapist, languages):
    html = therapist.client.get(f"/en/enrol/{therapist.add(languages=languages)}")
    words = shown_passphrase(html.get_data(as_text=True)).split(" ")
    assert len(words) >= passphrase.WORD_COUNT
    assert set(words) <= set(passphrase.wordlist(languages[0]))


def test_enrolment_page_shows_the_uri_as_text_and_as_a_qr_code(therapist):
    html = therapist.client.get(f"/en/enrol/{therapist.add()}").get_data(as_text=True)
    assert 'id="totp-uri">otpauth://totp/Stillroom:Anna?secret=' in html
    assert "<svg" in html and "<script" not in html


def test_an_enrolment_link_works_once(therapist):
    token = therapist.add()
    assert therapist.enrol(token).status_code == 302
    assert therapist.client.get(f"/en/enrol/{token}").status_code == 404


def test_an_enrolment_link_expires_after_24_hours(therapist, clock):
    token = therapist.add()
    clock.advance(24 * 3600 + 1)
    assert therapist.client.get(f"/en/enrol/{token}").status_code == 404


@pytest.mark.parametrize(
    "chosen",
    ["Passwort1234567!", "Summer2024Summer", "Praxis-Anna-2024", "lantern orbit velvet cactus"],
)
def test_a_therapist_cannot_choose_the_passphrase(therapist, settings, chosen):
    token = therapist.add()
    response = therapist.enrol(token, confirm=chosen)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "not the passphrase shown above" in page or "could not be read" in page
    assert therapist.client.get(f"/en/enrol/{token}").status_code == 200  # still usable
    db = connect(settings.database_path)
    try:
        assert db.execute("SELECT slot FROM therapists").fetchone() == (None,)
    finally:
        db.close()


def test_a_passphrase_the_server_did_not_make_opens_no_account(therapist, settings, clock):
    """The pending field is sealed by the server; even its key could not smuggle one in."""
    token = therapist.add()
    with pytest.raises(PassphraseNotGeneratedError):
        enrol_directly(settings, token, "Praxis-Anna-2024", clock)
    with pytest.raises(PassphraseNotGeneratedError):  # real words, too few of them
        enrol_directly(settings, token, "apple banana cherry", clock)


def enrol_directly(settings, token: str, passphrase_text: str, clock) -> None:
    deriver = kdf.KeyDeriver(kdf.FAST_FOR_TESTS, 1, 1)
    secret = pyotp.random_base32(32)
    db = connect(settings.database_path)
    try:
        enrol(db, deriver, token, passphrase_text, secret, pyotp.TOTP(secret).at(clock()), 0)
    finally:
        db.close()


def test_the_page_of_a_new_passphrase_welcomes_a_password_manager(therapist):
    html = therapist.client.get(f"/en/enrol/{therapist.add()}").get_data(as_text=True)
    assert "password manager" in html
    assert 'autocomplete="new-password"' in html and 'autocomplete="username"' in html


def test_a_wrong_code_at_enrolment_is_explained_and_nothing_is_set(therapist, settings):
    token = therapist.add()
    html = therapist.client.get(f"/en/enrol/{token}").get_data(as_text=True)
    response = therapist.client.post(
        f"/en/enrol/{token}",
        data={**form_fields(html), "confirm": shown_passphrase(html), "code": "000000"},
    )
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "That code did not fit" in page
    assert shown_passphrase(page) == shown_passphrase(html), "the same passphrase, still"
    assert therapist.client.get(f"/en/enrol/{token}").status_code == 200  # still usable


def test_login_needs_name_passphrase_and_a_fresh_code(therapist):
    therapist.create()
    therapist.logout()
    assert therapist.login(passphrase="wrong passphrase for sure").status_code == 401
    response = therapist.login()
    assert response.status_code == 302
    assert therapist.client.get("/en/").status_code == 200


def test_a_failed_login_keeps_the_login_name_and_nothing_else(therapist):
    therapist.create()
    therapist.logout()
    failed = therapist.login(passphrase="wrong passphrase for sure").get_data(as_text=True)
    login_name = therapist.login_names["Anna"]
    assert f'id="name" name="name" value="{login_name}"' in failed
    assert "wrong passphrase for sure" not in failed


def test_a_failed_login_after_logging_out_shows_only_the_error(therapist):
    therapist.create()
    logged_out = therapist.logout().location
    assert "You are logged out." in therapist.client.get(logged_out).get_data(as_text=True)
    html = therapist.client.get(logged_out).get_data(as_text=True)
    failed = therapist.client.post(
        logged_out,
        data={**form_fields(html), "name": therapist.login_names["Anna"], "code": "000000"},
    )
    page = failed.get_data(as_text=True)
    assert failed.status_code == 401 and "was not right" in page
    assert "You are logged out." not in page


def test_an_overlapping_time_after_publishing_shows_only_the_error(therapist):
    therapist.create()
    published = therapist.publish("2027-01-18", "18:00")
    assert "done=published" in published.location
    assert "are published" in therapist.client.get(published.location).get_data(as_text=True)
    clash = therapist.post(
        published.location,
        {"date": "2027-01-18", "time": "18:30", "duration": "50", "languages": "en"},
    )
    page = clash.get_data(as_text=True)
    assert clash.status_code == 400 and "Nothing was published." in page
    assert "are published" not in page


def test_the_home_page_does_not_say_nothing_is_booked_beside_a_chat_today(therapist, auth, client):
    therapist.create()
    assert therapist.publish("2027-01-15", "11:00").status_code == 302  # today, in Berlin
    auth.create()
    booking = client.get("/en/book").get_data(as_text=True)
    [slot] = re.findall(r"name=slot value=([0-9a-f]+)", booking)
    assert auth.post("/book", {"slot": slot}).status_code == 302
    home = therapist.client.get("/en/").get_data(as_text=True)
    assert home.count('class="pseudonym"') == 1 and "No chats today" not in home
    assert "No appointments are booked yet" not in home
    assert "Nothing is booked after today yet." in home


def test_each_code_works_only_once(therapist, portal_app):
    therapist.create()
    therapist.logout()
    code = therapist.code()
    assert therapist.login(code=code).status_code == 302
    other = portal_app.test_client()
    html = other.get("/en/login").get_data(as_text=True)
    again = other.post(
        "/en/login",
        data={
            **form_fields(html),
            "name": therapist.login_names["Anna"],
            "passphrase": therapist.passphrases["Anna"],
            "code": code,
        },
    )
    assert again.status_code == 401


def test_the_public_name_does_not_log_in(therapist):
    therapist.create()
    therapist.logout()
    html = therapist.client.get("/en/login").get_data(as_text=True)
    response = therapist.client.post(
        "/en/login",
        data={
            **form_fields(html),
            "name": "Anna",
            "passphrase": therapist.passphrases["Anna"],
            "code": therapist.code(),
        },
    )
    assert response.status_code == 401  # so nobody can pause Anna's account by her public name


def test_a_wrong_code_counts_as_a_failure(therapist):
    therapist.create()
    therapist.logout()
    for _ in range(5):
        assert therapist.login(code="000000").status_code == 401
    assert therapist.login().status_code == 429


def test_parallel_guesses_cannot_pass_the_limit(therapist, portal_app):
    therapist.create()
    therapist.logout()
    clients = [portal_app.test_client() for _ in range(20)]
    forms = [form_fields(c.get("/en/login").get_data(as_text=True)) for c in clients]
    barrier = threading.Barrier(len(clients))
    codes: list[int] = []

    def guess(client, form) -> None:
        barrier.wait(timeout=30)
        response = client.post(
            "/en/login",
            data={
                **form,
                "name": therapist.login_names["Anna"],
                "passphrase": "a wrong guess here",
                "code": "123456",
            },
        )
        codes.append(response.status_code)

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(clients, forms, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert codes.count(401) == 5 and codes.count(429) == 15, sorted(codes)


def test_a_busy_server_does_not_count_against_the_therapist(therapist, portal_app):
    therapist.create()
    therapist.logout()
    deriver = portal_app.config["KEY_DERIVER"]
    deriver.wait_seconds = 0.05
    deriver._slots.acquire()  # a flood holds the portal's argon2 slot
    try:
        for _ in range(7):
            assert therapist.login().status_code == 503
    finally:
        deriver._slots.release()
    assert therapist.login().status_code == 302


@pytest.mark.parametrize("name", ["Anna", "zzzz-nobody"])
def test_a_name_that_exists_and_one_that_does_not_answer_alike(therapist, portal_app, clock, name):
    """The same answers in the same order: failures, a pause, its end to the second, a
    busy server; so the answers cannot tell which login names exist."""
    therapist.create()
    therapist.logout()

    def answers(count: int) -> list[int]:
        return [
            therapist.login(name=name, passphrase="a wrong one").status_code for _ in range(count)
        ]

    assert answers(6) == [401] * 5 + [429]
    clock.advance(15 * 60 + 1)  # no purge has run: the pause and the count have run out
    assert answers(1) == [401]
    deriver = portal_app.config["KEY_DERIVER"]
    deriver.wait_seconds = 0.05
    deriver._slots.acquire()  # a flood holds the portal's argon2 slot
    try:
        assert answers(7) == [503] * 7, "a try that tried nothing counts for nobody"
    finally:
        deriver._slots.release()
    assert answers(5) == [401] * 4 + [429]


def test_a_hidden_value_from_the_other_passphrase_form_is_a_calm_refusal(therapist):
    """Enrolment and the passphrase page seal their hidden values with one key."""
    enrol_page = therapist.client.get(f"/en/enrol/{therapist.add('Bruno')}").get_data(as_text=True)
    therapist.create()
    page = therapist.client.get("/en/passphrase").get_data(as_text=True)
    fields = {**form_fields(page), "pending": form_fields(enrol_page)["pending"]}
    answer = therapist.client.post(
        "/en/passphrase", data={**fields, "current": therapist.passphrases["Anna"], "confirm": "x"}
    )
    assert answer.status_code == 400 and "open too long" in answer.get_data(as_text=True)


def test_a_therapist_disabled_meanwhile_loses_the_session(therapist, settings):
    therapist.create()
    db = connect(settings.database_path)
    try:
        db.execute("UPDATE therapists SET disabled = 1")  # as if between login and session
    finally:
        db.close()
    response = therapist.client.get("/en/")
    assert response.status_code == 302 and "session-ended" in response.location


def test_wrong_current_passphrases_count_towards_the_pause(therapist):
    therapist.create()
    for _ in range(5):
        wrong, _new = therapist.change_passphrase(current="not my passphrase at all")
        assert wrong.status_code == 400
        assert "current passphrase was not right" in wrong.get_data(as_text=True)
    paused, _new = therapist.change_passphrase()
    assert "paused for 15 minutes" in paused.get_data(as_text=True)


def test_an_overlong_passphrase_is_a_calm_failure(therapist):
    therapist.create()
    therapist.logout()
    assert therapist.login(passphrase=therapist.passphrases["Anna"] + " x" * 200).status_code == 401


def test_five_failures_pause_the_account_for_15_minutes(therapist, clock):
    therapist.create()
    therapist.logout()
    for _ in range(5):
        assert therapist.login(passphrase="not the right passphrase").status_code == 401
    paused = therapist.login()  # even the right passphrase waits now
    assert paused.status_code == 429
    assert "paused for 15 minutes" in paused.get_data(as_text=True)
    clock.advance(15 * 60)
    assert therapist.login().status_code == 302


def test_a_login_name_that_exists_nowhere_reaches_the_same_pause(therapist, clock):
    therapist.create()
    therapist.logout()
    answers = [
        therapist.login(name="zzzz-zzzz", passphrase="a guess").status_code for _ in range(6)
    ]
    assert answers == [401] * 5 + [429]
    assert "paused for 15 minutes" in therapist.login(name="zzzz-zzzz").get_data(as_text=True)
    clock.advance(15 * 60)
    assert therapist.login(name="zzzz-zzzz").status_code == 401  # the pause is over
    assert therapist.login().status_code == 302, "a name that exists was never paused by it"


def test_portal_sessions_idle_out_after_30_minutes(therapist, clock):
    therapist.create()
    assert therapist.client.get("/en/").status_code == 200
    clock.advance(29 * 60)
    assert therapist.client.get("/en/").status_code == 200  # still in, and moved on
    clock.advance(29 * 60)
    assert therapist.client.get("/en/").status_code == 200
    clock.advance(31 * 60)
    response = therapist.client.get("/en/")
    assert response.status_code == 302
    assert "session-ended" in response.location


def test_a_new_passphrase_rewraps_the_key_in_a_new_slot_and_ends_other_sessions(
    therapist, portal_app, settings
):
    therapist.create()
    old = therapist.passphrases["Anna"]
    other = type(therapist)(portal_app.test_client(), therapist.clock, settings.database_path)
    other.secret, other.login_names = therapist.secret, therapist.login_names
    other.passphrases = therapist.passphrases
    assert other.login().status_code == 302
    db = connect(settings.database_path)
    before = db.execute("SELECT slot, wrapped_secret_key, public_key FROM therapists").fetchone()
    response, new = therapist.change_passphrase()
    assert response.status_code == 302 and "passphrase-changed" in response.location
    after = db.execute("SELECT slot, wrapped_secret_key, public_key FROM therapists").fetchone()
    db.close()
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2], "the key pair is rewrapped, never replaced"
    assert other.client.get("/en/").status_code == 302  # logged out
    assert therapist.client.get("/en/").status_code == 200  # this browser stays in
    therapist.logout()
    assert therapist.login(passphrase=old).status_code == 401
    assert therapist.login(passphrase=new).status_code == 302


def test_portal_forms_need_a_token(therapist):
    therapist.create()
    response = therapist.client.post("/en/availability", data={"date": "2027-03-01"})
    assert response.status_code == 400


def test_a_participant_form_token_does_not_pass_the_portal(client, therapist):
    therapist.create()
    therapist.logout()
    html = client.get("/en/login").get_data(as_text=True)
    response = therapist.client.post(
        "/en/login",
        data={
            **form_fields(html),
            "name": therapist.login_names["Anna"],
            "passphrase": therapist.passphrases["Anna"],
            "code": therapist.code(),
        },
    )
    assert response.status_code == 400


def test_the_portal_serves_none_of_the_participant_pages(portal):
    for path in ("/en/create", "/en/account", "/en/book", "/en/help", "/de/account/delete"):
        assert portal.get(path).status_code == 404, path


def test_the_participant_app_serves_none_of_the_portal_pages(client, therapist):
    token = therapist.add()
    assert therapist.client.get(f"/en/enrol/{token}").status_code == 200  # a real link
    for path in ("/en/availability", f"/en/enrol/{token}", "/en/passphrase", "/en/slots/x/delete"):
        assert client.get(path).status_code == 404, path
    assert client.get("/en/login").get_data(as_text=True).count('name="code"') == 0


def test_the_portal_refuses_onion_and_foreign_hosts(portal):
    onion = "a" * 56 + ".onion"
    assert portal.get("/en/login", headers={"Host": onion}).status_code == 421
    assert portal.get("/en/login", headers={"Host": "evil.example"}).status_code == 421


def test_the_portal_answers_for_its_public_name(settings, clock):
    public = dataclasses.replace(settings, portal_url="https://portal.example.org")
    app = create_portal_app(public, clock=clock)
    client = app.test_client()
    response = client.get("/en/login", base_url="https://portal.example.org")
    assert response.status_code == 200
    actions = TherapistActions(client, clock, settings.database_path)
    token = actions.add()
    html = client.get(f"/en/enrol/{token}", base_url="https://portal.example.org")
    actions.secret = TOTP_SECRET.search(html.get_data(as_text=True)).group(1).replace(" ", "")
    enrolled = client.post(
        f"/en/enrol/{token}",
        base_url="https://portal.example.org",
        data={
            **form_fields(html.get_data(as_text=True)),
            "confirm": shown_passphrase(html.get_data(as_text=True)),
            "code": pyotp.TOTP(actions.secret).at(clock()),
        },
    )
    cookie = enrolled.headers["Set-Cookie"]
    assert cookie.startswith("__Host-stillroom_portal=") and "Secure" in cookie


@pytest.mark.parametrize("lang", ["en", "de", "cs", "pt", "es"])
def test_the_portal_speaks_every_language(portal, lang):
    html = portal.get(f"/{lang}/login").get_data(as_text=True)
    assert f'<html lang="{lang}">' in html
    assert 'name="code"' in html


def test_every_portal_route_sends_the_security_headers(portal_app, therapist):
    therapist.create()
    urls = [*every_rule_url(portal_app), "/xx/", "/en/nothing-here"]
    assert len(urls) > 30
    for url in urls:
        response = therapist.client.get(url)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (url, name)
        assert "Server" not in response.headers
        assert "script-src" not in response.headers["Content-Security-Policy"]
        if not url.endswith(".css"):
            assert response.headers["Cache-Control"] == "no-store", url
        assert "<script" not in response.get_data(as_text=True).lower(), url


@pytest.mark.parametrize("value", NASTY)
def test_no_portal_input_produces_a_500(therapist, value):
    """Every portal form, with a valid token so that the views really run."""
    token = therapist.add("Zoe")
    html = therapist.client.get(f"/en/enrol/{token}").get_data(as_text=True)
    bad = {"confirm": value, "code": value, "pending": value}
    response = therapist.client.post(f"/en/enrol/{token}", data={**form_fields(html), **bad})
    assert response.status_code < 500
    therapist.create()
    forms = {
        "/en/availability": {
            "date": value,
            "time": value,
            "duration": value,
            "weeks": value,
            "languages": value,
        },
        "/en/passphrase": {"current": value, "confirm": value, "pending": value},
    }
    for path, fields in forms.items():
        assert therapist.post(path, fields).status_code < 500, path
    for path in (f"/en/slots/{value}/delete", f"/en/appointments/{value}/cancel"):
        assert therapist.post(path, {"note": value}, page="/en/availability").status_code < 500
    therapist.logout()
    login = therapist.client.get("/en/login").get_data(as_text=True)
    data = {**form_fields(login), "name": value, "passphrase": value, "code": value}
    assert therapist.client.post("/en/login", data=data).status_code < 500


def at_berlin(day: int, clock: str) -> int:
    """Return a moment of January 2027 in Berlin (UTC+1) as a timestamp."""
    hours, minutes = map(int, clock.split(":"))
    return int(datetime(2027, 1, day, hours, minutes, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())


def appointment(starts: int, minutes: int = 50, extra: int = 0, cancelled: bool = False):
    return Appointment("a", "T", starts, starts + minutes * 60, "en", cancelled, None, "P", extra)


@pytest.mark.parametrize(
    ("item", "moment", "section"),
    [
        # A chat that runs past midnight stays among today's while it lasts, extended too.
        (appointment(at_berlin(18, "23:30")), at_berlin(19, "00:05"), "today"),
        (appointment(at_berlin(18, "23:00"), extra=30), at_berlin(19, "00:05"), "today"),
        (appointment(at_berlin(18, "23:30")), at_berlin(19, "00:30"), "earlier"),
        # Earlier in the day, ended: still today's.
        (appointment(at_berlin(19, "09:00")), at_berlin(19, "18:00"), "today"),
        (appointment(at_berlin(20, "09:00")), at_berlin(19, "18:00"), "later"),
        (appointment(at_berlin(5, "09:00"), cancelled=True), at_berlin(19, "18:00"), None),
        # Messages of a chat that closed on 5 January at 08:50 UTC go on 19 January (UTC).
        (appointment(at_berlin(5, "09:00")), at_berlin(19, "00:59"), "earlier"),  # 23:59 UTC
        (appointment(at_berlin(5, "09:00")), at_berlin(19, "01:00"), None),  # 00:00 UTC
    ],
)
def test_the_home_page_lists_each_appointment_where_a_therapist_looks(item, moment, section):
    assert home_section(item, moment, "Europe/Berlin", 14) == section


def test_a_block_can_withhold_the_therapists_times_from_accounts_made_after_it(chat, app, settings):
    slot_ids = re.compile(r"name=slot value=([0-9a-f]+)")
    older = AuthActions(app.test_client())
    older_passphrase = older.create()  # 2027-01-15, like the participant of the chat
    chat.at(int(datetime(2027, 1, 18, 17, tzinfo=ZoneInfo("UTC")).timestamp()))
    assert chat.therapist.publish("2027-01-25", "18:00").status_code == 302
    [[later]] = rows(settings, "SELECT id FROM slots WHERE starts_at > ?", [chat.clock.now])
    newer = AuthActions(app.test_client())
    newer.create()  # 2027-01-18, the day of the block
    block = f"/en/chat/{chat.id}/block"
    assert "Also hide my free times" in chat.therapist.client.get(block).get_data(as_text=True)

    def seen_by(visitor: AuthActions) -> list[str]:
        return slot_ids.findall(visitor.client.get("/en/book?week=1").get_data(as_text=True))

    chat.therapist.post(block, page=block)  # a block alone hides nothing
    assert seen_by(newer) == [later]
    chat.therapist.post(block, {"withhold": "yes"}, page=block)
    assert seen_by(newer) == []
    refused = newer.post("/book", {"slot": later}, page="/book")
    assert refused.status_code == 409, "nor can its id be sent by hand"
    assert rows(settings, "SELECT count(*) FROM appointments WHERE slot_id = ?", [later]) == [(0,)]
    assert older.login(older_passphrase).status_code == 302
    assert seen_by(older) == [later], "accounts made before the block's day still see them"
    availability = chat.therapist.client.get("/en/availability").get_data(as_text=True)
    assert "hidden from accounts made on or after Monday, 18 January 2027" in availability
    shown = chat.therapist.post("/en/availability/show-to-all", page="/en/availability")
    assert shown.status_code == 302 and "done=shown-to-all" in shown.location
    assert seen_by(newer) == [later]
