"""Passphrase-only accounts: create, log in, log out, replace, delete."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import time

from stillroom.crypto.passphrase import word_count
from stillroom.crypto.slots import SlotFile
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.retention import start_periodic_purge
from stillroom.webapp.settings import Settings

from support import PASSPHRASE, AuthActions, LoopbackClient, form_fields


def rows(settings: Settings, table: str) -> list[tuple[object, ...]]:
    return selected(settings, "SELECT *", table)


def selected(settings: Settings, columns: str, table: str = "participants") -> list[tuple]:
    with sqlite3.connect(settings.database_path) as conn:
        return conn.execute(f"{columns} FROM {table}").fetchall()


def in_use(settings: Settings) -> set[int]:
    """Return the numbers of the key slots that still hold a key."""
    slots = SlotFile(settings.data_dir / "keys.slots", writable=False)
    try:
        return slots.in_use()
    finally:
        slots.close()


def test_create_shows_passphrase_once_and_needs_it_typed_back(client, settings):
    page = client.get("/en/create").get_data(as_text=True)
    passphrase = PASSPHRASE.search(page).group(1)
    assert len(passphrase.split()) == word_count("en") >= 7
    assert "cannot recover" in page or "nobody can recover" in page
    wrong = client.post("/en/create", data={**form_fields(page), "confirm": "not it"})
    assert wrong.status_code == 400
    assert passphrase in wrong.get_data(as_text=True), "the same passphrase is shown again"
    assert rows(settings, "participants") == [], "no account before the passphrase is confirmed"
    typed = "  " + passphrase.upper().replace(" ", "   ") + " "
    created = client.post("/en/create", data={**form_fields(page), "confirm": typed})
    assert created.status_code == 302
    assert created.headers["Location"].startswith("/en/account")
    assert len(rows(settings, "participants")) == 1
    account = client.get("/en/account").get_data(as_text=True)
    assert passphrase not in account


def test_no_identifier_is_asked_for(client):
    for path in ("/en/create", "/en/login"):
        page = client.get(path).get_data(as_text=True)
        names = set(re.findall(r'<(?:input|textarea|select)[^>]* name="([^"]+)"', page))
        assert names <= {"form_token", "pending", "confirm", "passphrase"}, names


def test_login_logout_login(client, auth: AuthActions):
    passphrase = auth.create()
    assert auth.logout().status_code == 302
    assert client.get("/en/account").status_code == 302
    assert auth.login("wrong words entirely").status_code == 401
    response = auth.login(passphrase)
    assert response.status_code == 302
    assert client.get("/en/account").status_code == 200


def test_login_rotates_the_session_token(client, auth: AuthActions, settings):
    passphrase = auth.create()
    first = client.get_cookie("stillroom", domain="127.0.0.1").value
    auth.logout()
    auth.login(passphrase)
    second = client.get_cookie("stillroom", domain="127.0.0.1").value
    assert first != second
    assert len(rows(settings, "sessions")) == 1


def test_session_cookie_attributes(client):
    page = client.get("/en/create").get_data(as_text=True)
    assert "Set-Cookie" not in client.get("/en/").headers, "no cookie before login"
    passphrase = PASSPHRASE.search(page).group(1)
    response = client.post("/en/create", data={**form_fields(page), "confirm": passphrase})
    cookies = response.headers.getlist("Set-Cookie")
    assert len(cookies) == 1
    cookie = cookies[0]
    token = cookie.split(";")[0].split("=", 1)[1]
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered
    assert "expires" not in lowered and "max-age" not in lowered


def test_database_holds_no_token_and_no_open_key(client, auth: AuthActions, settings):
    auth.create()
    token = client.get_cookie("stillroom", domain="127.0.0.1").value
    raw = b"".join(path.read_bytes() for path in settings.data_dir.iterdir())
    assert token.encode() not in raw
    [(stored_hash, _, wrapped, *_)] = rows(settings, "sessions")
    assert len(stored_hash) == 32 and len(wrapped) == 32 + 40, "hash and SecretBox only"


def test_idle_timeout_ends_session(client, auth: AuthActions, clock, settings):
    auth.create()
    clock.advance(settings.idle_timeout_minutes * 60 - 5)
    assert client.get("/en/account").status_code == 200
    clock.advance(settings.idle_timeout_minutes * 60 + 1)
    response = client.get("/en/account")
    assert response.status_code == 302
    assert "session-ended" in response.headers["Location"]
    assert rows(settings, "sessions") == []


def test_a_wrong_passphrase_after_the_session_ended_shows_only_the_error(
    client, auth: AuthActions, clock, settings
):
    auth.create()
    clock.advance(settings.idle_timeout_minutes * 60 + 1)
    login = client.get("/en/account").headers["Location"]
    html = client.get(login).get_data(as_text=True)
    assert "Your session has ended." in html
    failed = client.post(login, data={**form_fields(html), "passphrase": "no such words here"})
    page = failed.get_data(as_text=True)
    assert failed.status_code == 401 and "No account has this passphrase." in page
    assert "Your session has ended." not in page


def test_absolute_timeout_ends_an_active_session(client, auth: AuthActions, clock, settings):
    auth.create()
    for _ in range(settings.absolute_timeout_hours * 60 // 20):
        clock.advance(20 * 60)
        client.get("/en/account")
    assert client.get("/en/account").status_code == 302


def test_replace_passphrase(client, auth: AuthActions, settings, app):
    old = auth.create()
    other = app.test_client()
    AuthActions(other).login(old)
    assert other.get("/en/account").status_code == 200
    page = client.get("/en/account/passphrase").get_data(as_text=True)
    new = PASSPHRASE.search(page).group(1)
    wrong_current = client.post(
        "/en/account/passphrase",
        data={**form_fields(page), "current": "nope nope", "confirm": new},
    )
    assert wrong_current.status_code == 400
    [(slot_before, key_before)] = selected(settings, "SELECT slot, wrapped_secret_key")
    done = client.post(
        "/en/account/passphrase", data={**form_fields(page), "current": old, "confirm": new}
    )
    assert done.status_code == 302
    assert client.get("/en/account").status_code == 200, "this browser stays logged in"
    assert other.get("/en/account").status_code == 302, "every other session ended"
    [(slot_after, key_after)] = selected(settings, "SELECT slot, wrapped_secret_key")
    assert key_after != key_before and slot_after != slot_before, "re-wrapped in a new slot"
    assert slot_before not in in_use(settings), "the old slot is destroyed"
    auth.logout()
    assert auth.login(old).status_code == 401
    assert auth.login(new).status_code == 302


def test_delete_account_removes_every_row(client, auth: AuthActions, settings, app):
    keep = AuthActions(app.test_client())
    keep.create()
    [kept] = rows(settings, "participants")
    passphrase = auth.create()
    [(participant_id, slot, public_key, wrapped, *_)] = [
        row for row in rows(settings, "participants") if row != kept
    ]
    response = auth.post("/account/delete")
    assert response.status_code == 302
    assert "Set-Cookie" in response.headers
    assert len(rows(settings, "participants")) == 1
    assert len(rows(settings, "sessions")) == 1
    assert client.get("/en/account").status_code == 302
    assert auth.login(passphrase).status_code == 401
    wal = settings.database_path.with_name("stillroom.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    raw = b"".join(path.read_bytes() for path in settings.data_dir.iterdir())
    for trace in (participant_id.encode(), public_key, wrapped):
        assert trace not in raw, "secure_delete and the checkpoint leave no bytes behind"
    assert slot not in in_use(settings), "its key slot is overwritten"


def test_logout_needs_post_and_token(client, auth: AuthActions):
    auth.create()
    assert client.get("/en/logout").status_code == 405
    assert client.post("/en/logout").status_code == 400
    assert client.get("/en/account").status_code == 200


def test_expired_sessions_are_removed_even_if_never_presented_again(
    app, auth: AuthActions, clock, settings
):
    abandoned = AuthActions(app.test_client())
    abandoned.create()
    clock.advance(settings.absolute_timeout_hours * 3600 + 1)
    auth.create()
    assert len(rows(settings, "sessions")) == 1, "only the new session is left"


def test_sending_the_create_form_twice_logs_in_once(client, settings):
    page = client.get("/en/create").get_data(as_text=True)
    data = {**form_fields(page), "confirm": PASSPHRASE.search(page).group(1)}
    first = client.post("/en/create", data=data)
    client.delete_cookie("stillroom", domain="127.0.0.1")
    second = client.post("/en/create", data=data)
    assert first.status_code == second.status_code == 302
    assert len(rows(settings, "participants")) == 1
    assert client.get("/en/account").status_code == 200


def test_deleting_while_a_reader_holds_the_log_still_answers_quickly(client, auth, settings):
    """A backup tool reading the database must not turn a deletion into an error."""
    auth.create()
    reader = sqlite3.connect(settings.database_path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM participants").fetchone()
        started = time.monotonic()
        response = auth.post("/account/delete")
        assert response.status_code == 302
        assert time.monotonic() - started < 5
    finally:
        reader.close()
    assert rows(settings, "participants") == []


def test_the_periodic_purge_removes_expired_sessions(app, auth: AuthActions, clock, settings):
    auth.create()
    clock.advance(settings.absolute_timeout_hours * 3600 + 1)
    stop = start_periodic_purge(settings, interval=0.05, clock=clock)
    try:
        deadline = time.monotonic() + 5
        while rows(settings, "sessions") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert rows(settings, "sessions") == []


def test_the_time_zone_band_is_sealed_to_the_participant(client, auth: AuthActions, settings):
    auth.create()
    page = client.get("/en/book").get_data(as_text=True)
    assert "Europe" in page or "UTC" in page  # the participant sees their band
    [(stored,)] = selected(settings, "SELECT time_zone")
    assert isinstance(stored, bytes) and b"Europe" not in stored and b"UTC" not in stored


def test_the_login_field_shows_the_words_but_keeps_no_history(client):
    page = client.get("/en/login").get_data(as_text=True)
    field = re.search(r"<input id=\"passphrase\"[^>]*>", page)
    assert field is not None
    assert 'type="password"' not in field.group(0)  # words copied from paper can be checked
    assert 'autocomplete="off"' in field.group(0) and 'spellcheck="false"' in field.group(0)


def test_the_help_page_offers_lines_only_when_there_are_some(client, settings, clock):
    page = client.get("/en/help").get_data(as_text=True)
    assert "112" in page and "one of these lines" not in page
    with_lines = create_participant_app(
        dataclasses.replace(settings, crisis_lines_en="Line A 0800 111; Line B 0800 222"),
        clock=clock,
    )
    with_lines.test_client_class = LoopbackClient
    listed = with_lines.test_client().get("/en/help").get_data(as_text=True)
    assert listed.index("Then call one of these lines:") < listed.index("Line A 0800 111")


def test_accounts_beyond_the_rate_get_a_calm_busy_page_and_keep_their_passphrase(settings, clock):
    app = create_participant_app(dataclasses.replace(settings, accounts_per_minute=2), clock=clock)
    app.test_client_class = LoopbackClient
    for _ in range(2):
        AuthActions(app.test_client()).create()
    client = app.test_client()
    page = client.get("/en/create").get_data(as_text=True)
    passphrase = PASSPHRASE.search(page).group(1)
    form = {**form_fields(page), "confirm": passphrase}
    busy = client.post("/en/create", data=form)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
    text = busy.get_data(as_text=True)
    assert "Please try again in a minute" in text and "/en/help" in text
    assert PASSPHRASE.search(text).group(1) == passphrase, "what they wrote down still holds"
    assert len(rows(settings, "participants")) == 2
    clock.advance(60)
    assert client.post("/en/create", data=form).status_code == 302
    assert client.get("/en/account").status_code == 200
    assert len(rows(settings, "participants")) == 3


def test_a_login_goes_through_while_account_creation_is_saturated(app, client, settings):
    passphrase = AuthActions(app.test_client()).create()
    creation = app.config["CREATION_KEY_DERIVER"]
    creation.wait_seconds = 0
    page = client.get("/en/create").get_data(as_text=True)
    new = {**form_fields(page), "confirm": PASSPHRASE.search(page).group(1)}
    held = settings.account_argon2_concurrency
    for _ in range(held):  # every slot of account creation is taken, as in a flood
        creation._slots.acquire()
    try:
        assert client.post("/en/create", data=new).status_code == 503
        assert AuthActions(client).login(passphrase).status_code == 302
    finally:
        for _ in range(held):
            creation._slots.release()
    assert client.get("/en/account").status_code == 200
