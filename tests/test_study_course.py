"""The course of sessions: one therapist, proposed next times, the waitlist and its crossover."""

from __future__ import annotations

import datetime
import itertools
import re
from pathlib import Path

import pytest

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment, course, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study

from support import (
    FAST_ARGON2,
    NO_INTAKE_LIMITS,
    SLOT,
    AuthActions,
    LoopbackClient,
    TherapistActions,
    form_fields,
    rows,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
DAY = 24 * 3600
#: Entries of the allocation list the tests take, one after the other.
POSITIONS = itertools.count(100)


def allocate(settings, participant_id: str, arm: str, day: datetime.date) -> str:
    """Put an account in the study as intake would: a pseudonym and its allocation."""
    pseudonym = f"S{participant_id[:8]}"
    db = connect(settings.database_path)
    try:
        with transaction(db):
            db.execute(
                "INSERT INTO study_participants (participant_id, pseudonym, stratum, step)"
                " VALUES (?, ?, 'en-berlin', 'done')",
                [participant_id, pseudonym],
            )
            db.execute(
                "INSERT INTO allocations (pseudonym, stratum, position, arm, day)"
                " VALUES (?, 'en-berlin', ?, ?, ?)",
                [pseudonym, next(POSITIONS), arm, day.isoformat()],
            )
    finally:
        db.close()
    return pseudonym


def events(settings, event: str) -> list[study_log.Entry]:
    db = connect(settings.database_path)
    try:
        return study_log.entries(db, event)
    finally:
        db.close()


@pytest.fixture
def study_settings(tmp_path) -> Settings:
    """Settings of a deployment running the example study, started in its data directory."""
    settings = Settings.load(
        {},
        data_dir=tmp_path / "instance",
        disk_reserve_mib=1,
        study=str(EXAMPLE),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )
    prepare_instance(settings)
    study = load_study(EXAMPLE)
    db = connect(settings.database_path)
    try:
        keys = (new_recipient_keypair()[0], new_recipient_keypair()[0])
        amendment.start(db, settings.data_dir, study, datetime.date(2027, 1, 1), keys, 10)
        db.execute("UPDATE therapists SET site = 'berlin'")
    finally:
        db.close()
    return settings


@pytest.fixture
def study_world(study_settings, clock):
    """A participant app and a portal over the started study, and their clients."""
    app = create_participant_app(study_settings, clock=clock)
    app.test_client_class = LoopbackClient
    portal_app = create_portal_app(study_settings, clock=clock)
    portal_app.test_client_class = LoopbackClient
    therapist = TherapistActions(portal_app.test_client(), clock, study_settings.database_path)
    return AuthActions(app.test_client()), therapist


def participant_ids(settings) -> list[str]:
    return [row[0] for row in rows(settings, "SELECT id FROM participants ORDER BY rowid")]


def in_berlin(settings) -> None:
    db = connect(settings.database_path)
    try:
        with transaction(db):
            db.execute("UPDATE therapists SET site = 'berlin'")
    finally:
        db.close()


def test_a_waitlisted_participant_books_from_the_day_it_ends_and_crosses_over_once(
    study_world, study_settings, clock
):
    auth, therapist = study_world
    therapist.create()
    in_berlin(study_settings)
    assert therapist.publish("2027-02-15", "18:00", weeks="6").status_code == 302
    passphrase = auth.create()
    [participant] = participant_ids(study_settings)
    today = datetime.datetime.fromtimestamp(clock(), datetime.UTC).date()
    pseudonym = allocate(study_settings, participant, "waitlist", today)

    page = auth.client.get("/en/account").get_data(as_text=True)
    ends = today + datetime.timedelta(weeks=4)
    assert f"Your waiting time ends on {ends:%A}, {ends.day} {ends:%B %Y}" in page
    assert "Book a time" not in page
    booking = auth.client.get("/en/book")
    assert "Your waiting time ends on" in booking.get_data(as_text=True)
    assert SLOT.findall(booking.get_data(as_text=True)) == []
    [slot_id] = rows(study_settings, "SELECT id FROM slots ORDER BY starts_at LIMIT 1")[0]
    refused = auth.post("/book", {"slot": slot_id}, page="/book")
    assert refused.status_code == 403
    assert rows(study_settings, "SELECT count(*) FROM appointments") == [(0,)]

    purge_at = connect(study_settings.database_path)
    try:
        purge(purge_at, int(clock()) + 27 * DAY, study_settings)  # the day before: nothing
        assert events(study_settings, "crossover") == []
        clock.now = datetime.datetime.combine(ends, datetime.time(0), datetime.UTC).timestamp()
        auth.client.delete_cookie("stillroom", domain="127.0.0.1")
        assert auth.login(passphrase).status_code == 302
        page = auth.client.get("/en/account").get_data(as_text=True)
        assert "Session 1 of 6" in page
        purge(purge_at, int(clock()) + 60, study_settings)
        auth.client.get("/en/account")
    finally:
        purge_at.close()
    [crossover] = events(study_settings, "crossover")
    assert (crossover.pseudonym, crossover.day) == (pseudonym, ends.isoformat())
    [slot] = SLOT.findall(auth.client.get("/en/book").get_data(as_text=True))[:1]
    assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302


def test_the_maintenance_pass_crosses_over_first_and_a_page_view_adds_nothing(
    study_world, study_settings, clock
):
    auth, _ = study_world
    auth.create()
    [participant] = participant_ids(study_settings)
    four_weeks_ago = datetime.datetime.fromtimestamp(clock() - 28 * DAY, datetime.UTC).date()
    allocate(study_settings, participant, "waitlist", four_weeks_ago)
    db = connect(study_settings.database_path)
    try:
        purge(db, int(clock()), study_settings)
        purge(db, int(clock()) + 60, study_settings)
    finally:
        db.close()
    assert len(events(study_settings, "crossover")) == 1
    auth.client.get("/en/account")
    assert len(events(study_settings, "crossover")) == 1


def test_in_the_chat_arm_a_first_session_is_only_with_a_therapist_of_the_site(
    study_world, study_settings, clock
):
    auth, therapist = study_world
    therapist.create("Anna")
    assert therapist.publish("2027-01-19", "18:00").status_code == 302
    therapist.logout()
    therapist.create("Ben", ("cs", "en"))
    assert therapist.publish("2027-01-18", "18:00", languages=("cs", "en")).status_code == 302
    db = connect(study_settings.database_path)
    try:
        with transaction(db):
            db.execute("UPDATE therapists SET site = 'berlin' WHERE name = 'Anna'")
            db.execute("UPDATE therapists SET site = 'prague' WHERE name = 'Ben'")
    finally:
        db.close()
    auth.create()
    [participant] = participant_ids(study_settings)
    allocate(study_settings, participant, "chat", datetime.date(2027, 1, 10))

    page = auth.client.get("/en/book").get_data(as_text=True)
    assert "Anna" in page and "Ben" not in page
    [[ben_slot]] = rows(
        study_settings,
        "SELECT slots.id FROM slots JOIN therapists ON therapists.id = therapist_id"
        " WHERE therapists.name = 'Ben'",
    )
    assert auth.post("/book", {"slot": ben_slot}, page="/book").status_code == 409
    # Another language in the address leads to no other stratum, so to no other site.
    czech = AuthActions(auth.client, "cs")
    assert "Ben" not in auth.client.get("/cs/book").get_data(as_text=True)
    assert czech.post("/book", {"slot": ben_slot}, page="/book").status_code == 409
    assert rows(study_settings, "SELECT count(*) FROM appointments") == [(0,)]
    # Nor does the course's therapist lead out of the stratum: not in another language of
    # the site, and not once the therapist has moved to another site.
    db = connect(study_settings.database_path)
    try:
        [(anna,)] = db.execute("SELECT id FROM therapists WHERE name = 'Anna'").fetchall()
        with transaction(db):
            db.execute(
                "INSERT INTO courses (participant_id, therapist_id) VALUES (?, ?)",
                [participant, anna],
            )
        study = load_study(EXAMPLE)
        assert course.bookable_therapists(db, participant, "en", study) == {anna}
        assert course.bookable_therapists(db, participant, "de", study) == frozenset()
        with transaction(db):
            db.execute("UPDATE therapists SET site = 'prague' WHERE id = ?", [anna])
        assert course.bookable_therapists(db, participant, "en", study) == frozenset()
    finally:
        db.close()


def test_an_account_that_is_not_allocated_cannot_book_in_a_study(study_world, study_settings):
    auth, therapist = study_world
    therapist.create()
    in_berlin(study_settings)
    assert therapist.publish("2027-01-18", "18:00").status_code == 302
    auth.create()
    page = auth.client.get("/en/book")
    assert SLOT.findall(page.get_data(as_text=True)) == []
    # Without an allocation, intake is not done: booking sends the account back to it.
    assert page.status_code == 302 and page.headers["Location"].endswith("/en/account")


def book_first(auth, name: str):
    html = auth.client.get("/en/book").get_data(as_text=True)
    [slot] = re.findall(rf"name=slot value=([0-9a-f]+)[^<]*>[^<]*<[^>]*>[^<]*{name}", html) or [
        SLOT.findall(html)[0]
    ]
    return auth.post("/book", {"slot": slot}, page="/book")


def test_after_the_first_session_the_course_stays_with_its_therapist_until_a_handover(
    chat, therapist, auth, settings, clock
):
    # Chat: Anna's appointment is booked. Ben publishes a time too.
    anna_secret = therapist.secret
    therapist.logout()
    therapist.create("Ben")
    assert therapist.publish("2027-01-25", "18:00").status_code == 302
    therapist.logout()
    therapist.secret = anna_secret  # each therapist has a TOTP secret of their own
    page = auth.client.get("/en/book?week=1").get_data(as_text=True)
    assert "Ben" not in page
    [[ben_slot]] = rows(
        settings,
        "SELECT slots.id FROM slots JOIN therapists ON therapists.id = therapist_id"
        " WHERE therapists.name = 'Ben'",
    )
    chat.at(clock.now)  # the participant may hold one appointment: free it first
    cancel = auth.post(f"/appointments/{chat.id}/cancel")
    assert cancel.status_code == 302
    assert auth.post("/book", {"slot": ben_slot}, page="/book").status_code == 409

    # Anna hands the participant over to Ben from her chat page.
    assert therapist.publish("2027-01-26", "18:00").status_code == 302
    [[slot]] = rows(
        settings,
        "SELECT slots.id FROM slots JOIN therapists ON therapists.id = therapist_id"
        " WHERE therapists.name = 'Anna' AND starts_at > 1800000000 ORDER BY starts_at LIMIT 1",
    )
    assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302
    [[anna_appointment]] = rows(
        settings, "SELECT id FROM appointments WHERE cancelled = 0 ORDER BY starts_at DESC LIMIT 1"
    )
    handover = f"/en/chat/{anna_appointment}/handover"
    html = therapist.client.get(handover).get_data(as_text=True)
    [ben_id] = re.findall(r'<option value="([0-9a-f]+)">Ben<', html)
    answer = therapist.client.post(handover, data={**form_fields(html), "to": ben_id})
    assert answer.status_code == 302
    auth.post(f"/appointments/{anna_appointment}/cancel")
    assert auth.post("/book", {"slot": ben_slot}, page="/book").status_code == 302


def test_a_proposed_time_is_offered_to_that_participant_alone_and_booked_with_every_rule(
    chat, therapist, auth, settings, clock, app
):
    page = f"/en/chat/{chat.id}"
    html = therapist.client.get(page).get_data(as_text=True)
    answer = therapist.client.post(
        f"/en/chat/{chat.id}/propose",
        data={**form_fields(html), "kind": "new", "date": "2027-01-25", "time": "18:00"},
    )
    assert "course=proposed" in answer.headers["Location"]

    account = auth.client.get("/en/account").get_data(as_text=True)
    assert "Anna proposes your next session for Monday, 25 January 2027, 17:00" in account
    other = AuthActions(app.test_client())
    other.create()
    seen = other.client.get("/en/book?week=1").get_data(as_text=True)
    assert "25 January" not in seen  # a time made for one participant is theirs alone

    # One upcoming appointment is the limit: the confirmation is refused while it stands.
    refused = auth.post("/course/confirm", page="/account")
    assert "course=limit" in refused.headers["Location"]
    assert "You already have an upcoming appointment" in auth.client.get(
        refused.headers["Location"]
    ).get_data(as_text=True)

    chat.at(1_800_000_000 + 4 * DAY)  # the first appointment is over
    done = auth.post("/course/confirm", page="/account")
    assert done.headers["Location"].endswith("done=booked")
    booked = rows(settings, "SELECT starts_at FROM appointments WHERE cancelled = 0")
    assert (int(datetime.datetime(2027, 1, 25, 17, tzinfo=datetime.UTC).timestamp()),) in booked
    again = auth.post("/course/confirm", page="/account")
    assert "course=gone" in again.headers["Location"]


def test_a_session_with_a_message_counts_once(chat, settings, clock, auth):
    chat.at(1_800_000_000 + 3 * DAY + 9 * 3600 + 30 * 60)  # 18 Jan, during the chat
    assert chat.say("participant", "Hello").status_code in (200, 302)
    assert chat.say("therapist", "Welcome").status_code in (200, 302)
    chat.at(1_800_000_000 + 4 * DAY)
    assert "Session 2 of 6" in auth.client.get("/en/account").get_data(as_text=True)
    db = connect(settings.database_path)
    try:
        purge(db, int(clock()) + 60, settings)
    finally:
        db.close()
    assert "Session 2 of 6" in auth.client.get("/en/account").get_data(as_text=True)
    assert rows(settings, "SELECT attended FROM courses") == [(1,)]


@pytest.mark.parametrize("case", ["both-wrote", "participant-alone", "erased-meanwhile"])
def test_in_a_study_a_session_is_logged_attended_with_its_minutes_or_missed_with_its_day(
    study_world, study_settings, clock, case
):
    therapist_writes = case != "participant-alone"
    auth, therapist = study_world
    therapist.create()
    in_berlin(study_settings)
    assert therapist.publish("2027-01-18", "18:00").status_code == 302
    passphrase = auth.create()
    [participant] = participant_ids(study_settings)
    pseudonym = allocate(study_settings, participant, "chat", datetime.date(2027, 1, 10))
    [slot] = SLOT.findall(auth.client.get("/en/book").get_data(as_text=True))
    assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302
    [[appointment]] = rows(study_settings, "SELECT id FROM appointments")
    clock.now = 1_800_000_000 + 3 * DAY + 9 * 3600 + 30 * 60  # during the chat
    auth.client.delete_cookie("stillroom", domain="127.0.0.1")
    assert auth.login(passphrase).status_code == 302
    html = auth.client.get("/en/account").get_data(as_text=True)
    sent = auth.client.post(
        f"/en/chat/{appointment}/compose", data={**form_fields(html), "text": "Hello"}
    )
    assert sent.status_code < 400
    if therapist_writes:  # one side alone is a no-show, not a session
        therapist.client.delete_cookie("stillroom_portal", domain="127.0.0.1")
        assert therapist.login().status_code == 302
        answered = therapist.post(f"/en/chat/{appointment}/compose", {"text": "Welcome"})
        assert answered.status_code < 400
    db = connect(study_settings.database_path)
    try:
        if case == "erased-meanwhile":  # withdraws and erases while the chat is on
            intake.withdraw(db, participant, intake.ERASE, datetime.date(2027, 1, 18), clock.now)
        clock.now = 1_800_000_000 + 4 * DAY
        purge(db, int(clock()), study_settings)
        purge(db, int(clock()) + 60, study_settings)
    finally:
        db.close()
    if case == "erased-meanwhile":  # their course went with the erasure, and stays gone
        assert rows(study_settings, "SELECT * FROM courses") == []
        assert events(study_settings, "session-attended") == []
        assert events(study_settings, "session-missed") == []
        return
    if not therapist_writes:
        assert events(study_settings, "session-attended") == []
        # The export's sessions.csv says "not attended" from this row, once.
        [missed] = events(study_settings, "session-missed")
        assert (missed.pseudonym, missed.day, missed.detail) == (
            pseudonym,
            "2027-01-18",
            {"session": 1},
        )
        return
    assert events(study_settings, "session-missed") == []
    [attended] = events(study_settings, "session-attended")
    assert attended.pseudonym == pseudonym
    assert attended.day == "2027-01-18"
    assert attended.detail == {"minutes": 50, "session": 1}
