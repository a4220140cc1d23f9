"""The appointment chat: windows, encryption at rest, limits, deletion, the no-JS frames."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as open_socket
from werkzeug.serving import make_server

from stillroom.crypto.box import MessageUnavailableError, open_message
from stillroom.webapp import chatroom
from stillroom.webapp.booking import book
from stillroom.webapp.chat import EXTENSION_MINUTES, MAX_EXTENSION_MINUTES, RateLimiter
from stillroom.webapp.instance import subkey
from stillroom.webapp.retention import purge
from stillroom.webapp.security import LIVE_CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from stillroom.webapp.settings import Settings, SettingsError
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import reset_therapist

from support import ENDS, SLOT, STARTS, AuthActions, form_fields, rows


def test_both_sides_write_and_read_while_the_window_is_open(chat):
    chat.at(STARTS - 10 * 60)  # opens ten minutes before
    assert chat.say("participant", "Hello, I am a bit nervous.").status_code == 200
    assert chat.say("therapist", "Welcome. Take your time.").status_code == 200
    for side in ("participant", "therapist"):
        page = chat.feed(side).get_data(as_text=True)
        assert "Hello, I am a bit nervous." in page and "Welcome. Take your time." in page


def test_nobody_writes_outside_the_window_but_both_still_read(chat):
    chat.at(STARTS - 11 * 60)
    closed = chat.say("participant", "too early")
    assert closed.status_code == 409
    assert "The chat opens at 16:50" in closed.get_data(as_text=True)  # Western Europe, UTC+0
    assert "Your text is still here" in closed.get_data(as_text=True)
    assert "too early" in closed.get_data(as_text=True)
    chat.at(STARTS)
    chat.say("participant", "on time")
    chat.at(ENDS)
    late = chat.say("therapist", "too late")
    assert late.status_code == 409 and "The chat has ended" in late.get_data(as_text=True)
    assert "on time" in chat.feed("participant").get_data(as_text=True)
    assert rows(chat.settings, "SELECT count(*) FROM messages") == [(1,)]


def test_a_copy_of_the_data_directory_reads_no_message(chat, settings, tmp_path):
    chat.at(STARTS)
    secret = "canary-7f3a9 my private words"
    chat.say("participant", secret)
    chat.say("therapist", "reply-canary-51c2")
    chat.auth.logout()
    chat.therapist.logout()
    copy = tmp_path / "copy"
    shutil.copytree(settings.data_dir, copy, ignore=shutil.ignore_patterns("tor"))
    everything = b"".join(path.read_bytes() for path in copy.rglob("*") if path.is_file())
    for text in (secret, "reply-canary-51c2"):
        assert text.encode() not in everything
        assert text.encode("utf-16-le") not in everything
    db = connect(copy / "stillroom.db")
    try:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM therapist_sessions").fetchone() == (0,)
        server_key = (copy / "server.key").read_bytes()
        candidates = [server_key] + [
            subkey(server_key, purpose)
            for purpose in (b"form-key", b"lookup-key", b"pending-key", b"totp-key")
        ]
        for conversation_id, seq, envelope in db.execute(
            "SELECT conversation_id, seq, envelope FROM messages"
        ).fetchall():
            for key in candidates:  # nothing stored on the server opens a message
                with pytest.raises(MessageUnavailableError):
                    open_message(key, conversation_id, seq, envelope)
    finally:
        db.close()


def test_a_moved_or_altered_message_shows_as_unavailable(chat, settings):
    chat.at(STARTS)
    chat.say("participant", "first")
    chat.say("participant", "second")
    db = connect(settings.database_path)
    try:
        (one,), (two,) = db.execute("SELECT envelope FROM messages ORDER BY seq").fetchall()
        db.execute("UPDATE messages SET envelope = ? WHERE seq = 1", [two])  # moved
        altered = bytearray(one)
        altered[-1] ^= 0xFF
        db.execute("UPDATE messages SET envelope = ? WHERE seq = 2", [bytes(altered)])
    finally:
        db.close()
    for side in ("participant", "therapist"):
        page = chat.feed(side)
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert text.count("This message cannot be shown.") == 2
        assert "first" not in text and "second" not in text


def test_messages_are_plain_text(chat):
    chat.at(STARTS)
    chat.say("therapist", '<b>bold</b> <a href="http://x.example">link</a> javascript:alert(1)')
    chat.say("participant", "\u202eevil\u202c text\x07 with a bell\x1b[31m and e\u0301")
    # An isolate closed early, then an override: it would reverse the message's time.
    chat.say("participant", "\u2069\u2067\u202e\u05e9\u05dc\u05d5\u05dd\u200f!")
    page = chat.feed("participant").get_data(as_text=True)
    assert "<b>" not in page and "<a href" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<bdi>evil text with a bell[31m and \u00e9</bdi>" in page
    assert "<bdi>\u05e9\u05dc\u05d5\u05dd\u200f!</bdi>" in page  # Hebrew and its mark stay


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("   \n ", "write a message first"),
        ("x" * 2001, "at most 2000 characters"),
        # Only invisible characters: zero-width space, joiners, word joiner, BOM ...
        ("\u200b\u200c\u200d\u2060\ufeff", "write a message first"),
        # ... Hangul fillers, the blank braille pattern, a soft hyphen, variation selectors
        ("\u3164 \u115f\u2800\u00ad\ufe0f\u034f\U000e0041", "write a message first"),
    ],
)
def test_empty_and_overlong_messages_are_refused_and_kept(chat, text, says):
    chat.at(STARTS)
    response = chat.say("participant", text)
    assert response.status_code == 400 and says in response.get_data(as_text=True)
    if text.strip():
        assert text in response.get_data(as_text=True)  # shown again, never lost


def test_joiners_and_marks_inside_visible_text_are_kept(chat):
    chat.at(STARTS)
    text = "\U0001f469\u200d\U0001f4bb and a\u00adword"  # a ZWJ emoji, a soft hyphen
    assert chat.say("participant", text).status_code == 200
    assert text in chat.feed("therapist").get_data(as_text=True)


def test_the_longest_message_fits_in_a_request_in_any_script(chat):
    """2,000 characters of Chinese are 18,000 bytes form-encoded: sent, not a bare 413."""
    chat.at(STARTS)
    assert chat.say("participant", "\u4f60" * 2000).status_code == 200
    assert "\u4f60" * 20 in chat.feed("therapist").get_data(as_text=True)


def test_a_session_may_send_ten_messages_in_ten_seconds(chat, clock):
    chat.at(STARTS)
    for number in range(10):
        assert chat.say("participant", f"message {number}").status_code == 200
    slow = chat.say("participant", "one too many")
    assert slow.status_code == 429 and "very quickly" in slow.get_data(as_text=True)
    assert "one too many" in slow.get_data(as_text=True)
    clock.advance(10)
    assert chat.say("participant", "after a pause").status_code == 200


def test_the_therapist_extends_and_closes_the_chat(chat):
    chat.at(ENDS - 60)
    page = chat.therapist.post(f"/en/chat/{chat.id}/extend", page=f"/en/chat/{chat.id}")
    assert page.status_code == 302
    chat.at(ENDS + 10 * 60)
    assert chat.say("participant", "still here").status_code == 200
    chat.therapist.post(f"/en/chat/{chat.id}/close", page=f"/en/chat/{chat.id}")
    assert chat.say("participant", "after closing").status_code == 409
    assert "still here" in chat.feed("therapist").get_data(as_text=True)


def test_messages_expire_with_the_retention_period(chat, settings, clock):
    chat.at(STARTS)
    chat.say("participant", "kept for a while")
    db = connect(settings.database_path)
    try:
        clock.now = ENDS + 13 * 24 * 3600
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        clock.now = ENDS + 14 * 24 * 3600
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM conversations").fetchone() == (0,)  # key gone
    finally:
        db.close()


def test_delete_when_the_chat_ends(chat, settings, clock):
    chat.at(STARTS)
    chat.say("participant", "please forget this")
    assert (
        chat.auth.post(
            f"/chat/{chat.id}/when-it-ends", {"wanted": "1"}, page=f"/chat/{chat.id}"
        ).status_code
        == 302
    )
    db = connect(settings.database_path)
    try:
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)  # still open
        clock.now = ENDS
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
    finally:
        db.close()


def test_the_participant_deletes_the_conversation_now(chat, settings):
    chat.at(STARTS)
    chat.say("therapist", "something")
    response = chat.auth.post(f"/chat/{chat.id}/delete")
    assert response.status_code == 302 and "chat-deleted" in response.location
    assert rows(settings, "SELECT count(*) FROM messages") == [(0,)]
    assert rows(settings, "SELECT count(*) FROM conversations") == [(0,)]
    assert "something" not in chat.feed("therapist").get_data(as_text=True)


def test_an_unchanged_feed_is_answered_with_a_bare_304(chat):
    chat.at(STARTS)
    first = chat.feed("participant")
    assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
    etag = first.headers["ETag"]
    again = chat.feed("participant", **{"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert set(again.headers.keys()) <= {"ETag", "Cache-Control", "Content-Length"}
    chat.say("therapist", "news")
    changed = chat.feed("participant", **{"If-None-Match": etag})
    assert changed.status_code == 200 and "news" in changed.get_data(as_text=True)


def test_the_feed_is_gzipped_but_pages_with_a_form_token_never_are(chat):
    """Compression halves a feed page; beside a secret (a form token) it could leak it."""
    chat.at(STARTS)
    chat.say("therapist", "A message long enough to be worth compressing, and then some.")
    plain = chat.feed("participant").get_data()
    packed = chat.feed("participant", **{"Accept-Encoding": "gzip, deflate, br"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.get_data()) == plain
    assert len(packed.get_data()) < len(plain) * 0.7
    for path in (f"/en/chat/{chat.id}/compose", f"/en/chat/{chat.id}", "/en/account"):
        page = chat.auth.client.get(path, headers={"Accept-Encoding": "gzip"})
        assert 'name="form_token"' in page.get_data(as_text=True), path
        assert "Content-Encoding" not in page.headers, path


def test_the_feed_refreshes_faster_while_the_other_side_writes(chat, clock):
    chat.at(STARTS - 20 * 60)
    assert 'content="30"' in chat.feed("participant").get_data(as_text=True)  # waiting
    chat.at(STARTS)
    assert 'content="10"' in chat.feed("participant").get_data(as_text=True)  # quiet
    chat.say("therapist", "hello")
    assert 'content="5"' in chat.feed("participant").get_data(as_text=True)  # active
    assert 'content="10"' in chat.feed("therapist").get_data(as_text=True)  # own message
    clock.advance(3 * 60)
    assert 'content="10"' in chat.feed("participant").get_data(as_text=True)
    chat.at(ENDS)
    assert "http-equiv" not in chat.feed("participant").get_data(as_text=True)  # over


def test_other_peoples_chats_answer_404(chat, app):
    chat.at(STARTS)
    stranger = AuthActions(app.test_client())
    stranger.create()
    for path in ("", "/feed", "/compose", "/delete"):
        assert stranger.client.get(f"/en/chat/{chat.id}{path}").status_code == 404
    assert (
        stranger.post(f"/chat/{chat.id}/compose", {"text": "x"}, page="/account").status_code == 404
    )


def test_the_history_page_shows_the_whole_conversation(chat):
    chat.at(STARTS)
    count = chatroom.FEED_MESSAGES + 2
    for number in range(count):
        chat.clock.advance(2)  # within the limit on messages per second
        assert chat.say("participant", f"note {number}").status_code == 200
    feed = chat.feed("participant").get_data(as_text=True)
    shown = re.findall(r"<bdi>note (\d+)</bdi>", feed)  # the frame keeps to the newest
    assert sorted(map(int, shown)) == list(range(2, count))
    history = chat.auth.client.get(f"/en/chat/{chat.id}/history").get_data(as_text=True)
    assert all(f"<bdi>note {number}</bdi>" in history for number in range(count))
    assert 'href="/en/help"' in history and "http-equiv" not in history


def test_a_blocked_participant_can_no_longer_book(chat, app, settings):
    chat.at(STARTS)
    chat.therapist.publish("2027-01-25", "18:00")
    response = chat.therapist.post(f"/en/chat/{chat.id}/block", page=f"/en/chat/{chat.id}/block")
    assert response.status_code == 302 and "done=blocked" in response.location
    page = chat.auth.client.get("/en/book?week=1")
    assert page.status_code == 403
    text = page.get_data(as_text=True)
    assert "Booking is not available for this account" in text and "name=slot" not in text
    assert "block" not in text.lower()  # neutral: nothing says who or why
    [[slot]] = rows(settings, "SELECT id FROM slots WHERE starts_at > ?", [ENDS])
    assert chat.auth.post("/book", {"slot": slot}, page="/account").status_code == 403
    other = AuthActions(app.test_client())
    other.create()  # other accounts are not affected
    assert SLOT.findall(other.client.get("/en/book?week=1").get_data(as_text=True)) == [slot]


def test_the_portal_lists_todays_chats_first(chat):
    chat.at(STARTS - 3600)
    home = chat.therapist.client.get("/en/").get_data(as_text=True)
    today = home.split("Upcoming appointments")[0]
    assert "Today's chats" in home and f"/en/chat/{chat.id}" in today


def test_what_we_store_names_the_chat_tables_and_their_fields(client):
    page = client.get("/en/privacy").get_data(as_text=True)
    assert "Chat messages. Sender, time and text exist only inside the encryption." in page
    assert "Deleted on the day 14 days after the appointment ends, or sooner." in page
    details = client.get("/en/privacy/messages").get_data(as_text=True)
    assert "The message, padded to a fixed size and encrypted." in details
    assert client.get("/en/privacy/therapists").status_code == 404  # on the portal's page
    assert client.get("/en/privacy/nothing").status_code == 404


def test_a_reset_therapist_makes_the_chat_say_so_calmly(chat, settings):
    chat.at(STARTS)
    db = connect(settings.database_path)
    try:
        reset_therapist(db, "Anna", STARTS)
    finally:
        db.close()
    response = chat.say("participant", "are you there?")
    assert response.status_code == 400
    assert "cannot be opened with your current key" in response.get_data(as_text=True)
    assert "are you there?" in response.get_data(as_text=True)


def test_after_a_reset_and_new_enrolment_the_pair_chats_in_a_new_conversation(chat, settings):
    chat.at(STARTS)
    assert chat.say("participant", "before the reset").status_code == 200
    db = connect(settings.database_path)
    try:
        enrolment = reset_therapist(db, "Anna", STARTS)
        # The old conversation is gone, keys and all: nothing reopens it for the new key.
        assert db.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    finally:
        db.close()
    assert chat.therapist.enrol(enrolment.token).status_code == 302
    assert chat.say("participant", "after the reset").status_code == 200
    assert chat.say("therapist", "I can read you again").status_code == 200
    therapist_sees = chat.feed("therapist").get_data(as_text=True)
    assert "after the reset" in therapist_sees and "before the reset" not in therapist_sees
    assert "I can read you again" in chat.feed("participant").get_data(as_text=True)


def test_delete_when_the_chat_ends_even_with_a_next_appointment(chat, settings, clock):
    chat.at(STARTS)
    chat.therapist.publish("2027-01-25", "18:00")
    chat.say("participant", "forget this one")
    chat.auth.post(f"/chat/{chat.id}/when-it-ends", {"wanted": "1"}, page=f"/chat/{chat.id}")
    db = connect(settings.database_path)
    try:
        [[slot]] = db.execute("SELECT id FROM slots WHERE starts_at > ?", [ENDS]).fetchall()
        participant_id = db.execute("SELECT id FROM participants").fetchone()[0]
        book(db, participant_id, slot, "en", int(clock()), 2, 0)  # the next one, a week later
        clock.now = ENDS
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    finally:
        db.close()


def test_a_chat_cannot_be_closed_or_extended_before_it_opens(chat):
    chat.at(STARTS - 60 * 60)
    refused = chat.therapist.post(f"/en/chat/{chat.id}/close", page=f"/en/chat/{chat.id}")
    page = chat.therapist.client.get(refused.headers["Location"]).get_data(as_text=True)
    assert "has not opened yet, so nothing was changed" in page
    early = chat.therapist.post(f"/en/chat/{chat.id}/extend", page=f"/en/chat/{chat.id}")
    assert early.headers["Location"].endswith("done=not-open")
    assert rows(chat.settings, "SELECT chat_extra_minutes, chat_closed FROM appointments") == [
        (0, 0)
    ]
    chat.at(STARTS)
    assert chat.say("participant", "hello").status_code == 200


def test_frames_opened_before_the_chat_work_once_it_opens(chat):
    """Nothing reloads the compose frame or the therapist's page: both must be ready early."""
    chat.at(STARTS - 30 * 60)
    early = chat.auth.client.get(f"/en/chat/{chat.id}/compose").get_data(as_text=True)
    assert "The chat opens at 16:50." in early and '<textarea id="text"' in early
    portal = chat.therapist.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert "Extend by 15 minutes" in portal and "Close the chat now" in portal
    chat.clock.now = STARTS - 5 * 60  # the chat has opened; the frame was not reloaded
    sent = chat.auth.client.post(
        f"/en/chat/{chat.id}/compose", data={**form_fields(early), "text": "I am here."}
    )
    assert sent.status_code == 200 and "Sent." in sent.get_data(as_text=True)
    closed = chat.therapist.client.post(
        f"/en/chat/{chat.id}/close", data=form_fields(portal), follow_redirects=True
    )
    assert "The chat is closed." in closed.get_data(as_text=True)
    assert chat.say("participant", "after closing").status_code == 409


def test_the_portal_keeps_extended_and_earlier_chats_within_reach(chat):
    """An extended chat stays among today's; an earlier one is listed while it is kept."""
    chat_link, cancel_link = f'href="/en/chat/{chat.id}"', f"/en/appointments/{chat.id}/cancel"
    chat.at(ENDS - 60)
    chat.therapist.post(f"/en/chat/{chat.id}/extend", page=f"/en/chat/{chat.id}")
    chat.at(ENDS + 5 * 60)  # past the booked end, inside the extension
    today, *_ = chat.therapist.client.get("/en/").get_data(as_text=True).split("<h2>")
    assert chat_link in today and cancel_link not in today
    chat.at(ENDS + 3 * 24 * 3600)
    home = chat.therapist.client.get("/en/").get_data(as_text=True)
    earlier = home.split("<h2>Earlier chats</h2>")[1]
    assert chat_link in earlier and "Read the chat" in earlier and cancel_link not in home
    chat.at(ENDS + (chat.settings.message_retention_days + 1) * 24 * 3600)
    assert chat_link not in chat.therapist.client.get("/en/").get_data(as_text=True)


def test_an_extension_beyond_the_limit_says_so(chat):
    chat.at(ENDS - 60)
    for _ in range(MAX_EXTENSION_MINUTES // EXTENSION_MINUTES):
        extended = chat.therapist.post(f"/en/chat/{chat.id}/extend", page=f"/en/chat/{chat.id}")
        assert extended.headers["Location"].endswith("done=extended")
    page = chat.therapist.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert "Extend by" not in page and "Close the chat now" in page
    again = chat.therapist.client.post(
        f"/en/chat/{chat.id}/extend", data=form_fields(page), follow_redirects=True
    )
    assert "cannot be extended any further" in again.get_data(as_text=True)
    chat.at(ENDS + MAX_EXTENSION_MINUTES * 60 - 60)
    assert chat.say("participant", "the last minute").status_code == 200
    chat.at(ENDS + MAX_EXTENSION_MINUTES * 60)
    assert chat.say("participant", "one minute later").status_code == 409


@pytest.mark.parametrize(
    "values",
    [{"message_retention_days": 0}, {"message_retention_days": 30}],
)
def test_message_retention_must_fit_the_appointments(values):
    with pytest.raises(SettingsError):
        Settings.load({}, **values)


def test_the_rate_limiter_forgets_quiet_people():
    now = [0.0]
    limiter = RateLimiter(10, 10, clock=lambda: now[0])
    limiter.max_keys = 100
    for number in range(1000):
        now[0] = number * 0.1
        assert limiter.allow(f"person {number}".encode())
    assert len(limiter._events) <= 200


def test_chat_pages_carry_the_security_headers(chat):
    chat.at(STARTS)
    chat.say("therapist", "hello")
    for side, client in (("participant", chat.auth.client), ("therapist", chat.therapist.client)):
        for path in ("", "/feed", "/compose", "/history"):
            response = client.get(f"/en/chat/{chat.id}{path}")
            assert response.status_code == 200, (side, path)
            expected_headers = dict(SECURITY_HEADERS)
            if path == "":  # the chat page alone may run the live script
                expected_headers["Content-Security-Policy"] = LIVE_CONTENT_SECURITY_POLICY
            for name, value in expected_headers.items():
                assert response.headers.get(name) == value, (side, path, name)
            # Tor Browser keeps its cache in memory; an ordinary browser writes it to disk.
            kept = path == "/feed" and side == "participant"
            expected = "private, no-cache" if kept else "no-store"
            assert response.headers["Cache-Control"] == expected, (side, path)
            scripts = response.get_data(as_text=True).count("<script")
            assert scripts == (1 if path == "" else 0), (side, path)


def test_another_therapist_cannot_touch_the_chat(chat, portal_app, settings):
    chat.at(STARTS)
    other = type(chat.therapist)(portal_app.test_client(), chat.clock, settings.database_path)
    other.create("Bruno", ("en",))
    for path in ("", "/feed", "/compose", "/history", "/block"):
        assert other.client.get(f"/en/chat/{chat.id}{path}").status_code == 404, path
    for path in ("/compose", "/extend", "/close", "/block"):
        assert (
            other.post(f"/en/chat/{chat.id}{path}", {"text": "x"}, page="/en/").status_code == 404
        )
    stranger = AuthActions(chat.auth.client.application.test_client())
    stranger.create()
    for path in ("/when-it-ends", "/delete"):
        assert (
            stranger.post(f"/chat/{chat.id}{path}", {"wanted": "1"}, page="/account").status_code
            == 404
        )


def test_the_live_script_is_small_and_only_on_chat_pages(chat, client):
    chat.at(STARTS)
    page = chat.auth.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    [src] = re.findall(r'<script src="([^"]+)" defer>', page)
    script = chat.auth.client.get(src)
    assert script.status_code == 200 and len(script.get_data()) <= 3 * 1024
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "script-src" not in client.get("/en/account").headers["Content-Security-Policy"]


@pytest.fixture
def werkzeug_servers(app, portal_app):
    """Both apps on the Werkzeug server, which can hand sockets to flask-sock (tests only)."""
    servers = [
        make_server("127.0.0.1", 0, application, threaded=True) for application in (app, portal_app)
    ]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    yield [f"127.0.0.1:{server.server_port}" for server in servers]
    for server in servers:
        server.shutdown()


def test_the_websocket_brings_news_at_once(chat, werkzeug_servers):
    chat.at(STARTS)
    participant, _ = werkzeug_servers
    token = chat.auth.client.get_cookie("stillroom", domain="127.0.0.1").value
    with open_socket(
        f"ws://{participant}/en/chat/{chat.id}/live",
        origin=f"http://{participant}",
        additional_headers={"Cookie": f"stillroom={token}"},
        open_timeout=5,
    ) as socket:
        time.sleep(0.2)  # the socket is waiting on the notice board
        started = time.perf_counter()
        assert chat.say("therapist", "are you there?").status_code == 200
        assert socket.recv(timeout=5) == "news"
        delay = time.perf_counter() - started
        assert delay < 0.1, delay


def refused_status(url: str, origin: str | None, cookie: str = "") -> int | None:
    """Try to open a WebSocket as a browser would; return the status that refused it.

    ``None`` means it opened. The client sends ``Host`` with the port, as browsers do.
    """
    headers = {"Cookie": cookie} if cookie else {}
    try:
        with open_socket(url, origin=origin, additional_headers=headers, open_timeout=5):
            pass
    except InvalidStatus as refused:
        return int(refused.response.status_code)
    return None


def close_frame(socket, within: float) -> int | None:
    """Read until the server's close frame arrives (a ping on its way may come first).

    The client learns of the closing handshake from the frame itself; the TCP connection
    may close later (the test server takes its time), so this does not wait for that.
    """
    deadline = time.monotonic() + within
    while socket.protocol.close_rcvd is None and time.monotonic() < deadline:
        try:
            assert socket.recv(timeout=0.2) == "ping"
        except TimeoutError:
            continue
        except ConnectionClosed:
            break
    received = socket.protocol.close_rcvd
    return None if received is None else int(received.code)


def end_one_way(chat, settings, ending: str) -> str:
    """End the participant's or the therapist's session one way; return its side's table."""
    if ending == "timeout":
        chat.clock.now = STARTS + settings.idle_timeout_minutes * 60 + 1
        return "sessions"
    if ending == "therapist logout":
        chat.therapist.logout()
        return "therapist_sessions"
    assert chat.auth.post(ending, page="/account").status_code == 302
    return "sessions"


@pytest.mark.parametrize("ending", ["/logout", "/account/delete", "timeout", "therapist logout"])
def test_a_websocket_closes_once_its_session_has_ended(
    chat, werkzeug_servers, settings, monkeypatch, ending
):
    """Ending a session elsewhere also ends the chat tab's socket, with the code that stops
    the script from trying again; a new try is refused before any socket opens."""
    monkeypatch.setattr(chatroom, "LIVE_PING_SECONDS", 0.2)  # wakes often, as news would
    chat.at(STARTS)
    participant, portal = werkzeug_servers
    host, client, cookie = (
        (portal, chat.therapist.client, "stillroom_portal")
        if ending.startswith("therapist")
        else (participant, chat.auth.client, "stillroom")
    )
    token = client.get_cookie(cookie, domain="127.0.0.1").value
    url, origin, cookie_line = (
        f"ws://{host}/en/chat/{chat.id}/live",
        f"http://{host}",
        f"{cookie}={token}",
    )
    with open_socket(
        url,
        origin=origin,
        additional_headers={"Cookie": cookie_line},
        open_timeout=5,
        close_timeout=1,
    ) as socket:
        assert socket.recv(timeout=2) == "ping"  # the socket waits on the notice board
        assert chat.say("participant" if host == portal else "therapist", "x").status_code == 200
        notes = [socket.recv(timeout=2) for _ in range(5)]
        assert "news" in notes, notes  # it works while the session stands
        table = end_one_way(chat, settings, ending)
        if ending != "timeout":
            assert rows(settings, f"SELECT count(*) FROM {table}") == [(0,)]
        assert close_frame(socket, within=5) == chatroom.SESSION_ENDED
    assert refused_status(url, origin, cookie_line) == 403


def test_a_websocket_opened_by_another_site_is_refused(chat, werkzeug_servers):
    chat.at(STARTS)
    participant, _ = werkzeug_servers
    token = chat.auth.client.get_cookie("stillroom", domain="127.0.0.1").value
    url = f"ws://{participant}/en/chat/{chat.id}/live"
    port = int(participant.rsplit(":", 1)[1])
    for origin in (
        "http://evil.example",
        f"https://{participant}",  # another scheme
        f"http://127.0.0.1:{port + 1}",  # another port on the same host
        "http://127.0.0.1",  # the same host without its port
        "null",
        None,
    ):
        assert refused_status(url, origin, f"stillroom={token}") == 403, origin
    assert refused_status(url, f"http://{participant}", f"stillroom={token}") is None


def test_a_websocket_without_a_session_is_refused(chat, werkzeug_servers):
    chat.at(STARTS)
    participant, _ = werkzeug_servers
    url, origin = f"ws://{participant}/en/chat/{chat.id}/live", f"http://{participant}"
    assert refused_status(url, origin) == 403  # no socket opens, so the script gives up


def test_a_websocket_for_someone_elses_appointment_is_refused_before_it_opens(
    chat, werkzeug_servers, portal_app, settings
):
    """The handshake itself is refused (no ``101``), not a socket closed after opening."""
    chat.at(STARTS)
    participant, portal = werkzeug_servers
    other = type(chat.therapist)(portal_app.test_client(), chat.clock, settings.database_path)
    other.create("Bruno", ("en",))
    token = other.client.get_cookie("stillroom_portal", domain="127.0.0.1").value
    url = f"ws://{portal}/en/chat/{chat.id}/live"
    assert refused_status(url, f"http://{portal}", f"stillroom_portal={token}") == 404
    stranger = AuthActions(chat.auth.client.application.test_client())
    stranger.create()
    token = stranger.client.get_cookie("stillroom", domain="127.0.0.1").value
    url = f"ws://{participant}/en/chat/{chat.id}/live"
    assert refused_status(url, f"http://{participant}", f"stillroom={token}") == 404


def test_the_operator_can_undo_a_block(chat, settings):
    chat.at(STARTS)
    chat.therapist.post(f"/en/chat/{chat.id}/block", page=f"/en/chat/{chat.id}/block")
    [[pseudonym]] = rows(settings, "SELECT pseudonym FROM pairs")
    env = {**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": str(settings.data_dir)}
    stillroom = str(Path(sys.executable).with_name("stillroom"))
    wrong = subprocess.run(
        [stillroom, "participant", "unblock", "Anna", "AAAA-AAAA"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "knows no participant" in wrong.stderr
    done = subprocess.run(
        [stillroom, "participant", "unblock", "anna", pseudonym.lower()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert rows(settings, "SELECT blocked FROM participants") == [(0,)]
    assert chat.auth.client.get("/en/book").status_code == 200


def test_a_phone_sized_feed_shows_many_short_messages_but_stays_light_with_long_ones(chat):
    """More than a handful of messages fit; long ones are fewer, so a reload stays small."""
    chat.at(STARTS)
    for number in range(10):
        chat.clock.advance(2)
        chat.say("therapist" if number % 2 else "participant", f"short {number}")
    feed = chat.feed("participant").get_data(as_text=True)
    assert feed.count("<bdi>short") == 10
    for number in range(10):
        chat.clock.advance(2)
        chat.say("participant", f"{number} " + "long words " * 180)
    feed = chat.feed("participant", **{"Accept-Encoding": "identity"}).get_data()
    assert len(feed) <= 8 * 1024
    assert feed.count(b"long words") >= 180, "the newest long message is whole"


def test_message_bubbles_start_with_their_visible_label_and_no_space(chat):
    chat.at(STARTS)
    chat.say("participant", "first line\nsecond line")
    chat.say("therapist", "an answer")
    for who, mine, theirs in (
        ("participant", "You:", "Therapist:"),
        ("therapist", "You:", "Participant:"),
    ):
        feed = chat.feed(who).get_data(as_text=True)
        history = chat.auth.client if who == "participant" else chat.therapist.client
        page = history.get(f"/en/chat/{chat.id}/history").get_data(as_text=True)
        for html in (feed, page):
            # The label is its own line; the text follows it directly, not after a space
            # that pre-formatted text would show.
            assert f'class="who">{mine if who == "participant" else theirs}</b><bdi>first' in html
            assert f'class="who">{theirs if who == "participant" else mine}</b><bdi>an' in html


def test_closing_the_chat_asks_first_and_the_participant_is_told_who_ended_it(chat):
    chat.at(STARTS)
    chat.say("participant", "hello")
    page = chat.therapist.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert f'<form method="post" action="/en/chat/{chat.id}/close"' not in page
    confirm = chat.therapist.client.get(f"/en/chat/{chat.id}/close")
    assert confirm.status_code == 200 and "cannot be opened again" in confirm.get_data(True)
    assert rows(chat.settings, "SELECT chat_closed FROM appointments") == [(0,)]
    done = chat.therapist.post(f"/en/chat/{chat.id}/close")
    assert done.status_code == 302 and "done=closed" in done.location
    assert rows(chat.settings, "SELECT chat_closed FROM appointments") == [(1,)]
    feed = chat.feed("participant").get_data(as_text=True)
    assert "The therapist has ended the chat." in feed
    compose = chat.auth.client.get(f"/en/chat/{chat.id}/compose").get_data(as_text=True)
    assert "The therapist has ended the chat." in compose
    assert "You have ended the chat." in chat.feed("therapist").get_data(as_text=True)


def test_a_chat_on_another_day_says_which_day_it_opens(chat):
    chat.at(STARTS - 2 * 24 * 3600)
    for frame in ("feed", "compose"):
        page = chat.auth.client.get(f"/en/chat/{chat.id}/{frame}").get_data(as_text=True)
        assert "The chat opens at 16:50 on Monday, 18 January 2027." in page, frame
    chat.at(STARTS - 60 * 60)  # the same day: the time says enough
    assert "The chat opens at 16:50." in chat.feed("participant").get_data(as_text=True)


def test_the_account_page_moves_on_once_the_therapist_closed_the_chat(chat):
    chat.at(STARTS)
    before = chat.auth.client.get("/en/account").get_data(as_text=True)
    assert "Open the chat" in before and "Book a time" not in before
    chat.therapist.post(f"/en/chat/{chat.id}/close")
    after = chat.auth.client.get("/en/account").get_data(as_text=True)
    assert "The therapist has ended this chat." in after and "Read the chat" in after
    assert "Open the chat" not in after and "can no longer be moved" not in after
    assert "Book a time" in after


def test_deleting_when_the_chat_ends_says_so_where_the_page_lands(chat):
    chat.at(STARTS)
    chat.say("participant", "hello")
    chat_page = f"/chat/{chat.id}"
    chosen = chat.auth.post(f"{chat_page}/when-it-ends", {"wanted": "1"}, page=chat_page)
    assert chosen.location.endswith("done=ending#ending")
    page = chat.auth.client.get(chosen.location.split("#")[0]).get_data(as_text=True)
    landing = page[page.index('id="ending"') :]
    assert re.search(r'role="status">This conversation will be deleted when the chat ends', landing)
    kept = chat.auth.post(f"{chat_page}/when-it-ends", {"wanted": "0"}, page=chat_page)
    page = chat.auth.client.get(kept.location.split("#")[0]).get_data(as_text=True)
    assert 'role="status">This conversation will be kept until the usual deletion' in page
    plain = chat.auth.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert 'role="status"' not in plain


def test_the_therapist_is_told_calmly_what_a_participant_deleted(chat):
    chat.at(STARTS)
    chat.say("participant", "hello")
    chat.say("therapist", "welcome")
    assert chat.auth.post(f"/chat/{chat.id}/delete").status_code == 302
    feed = chat.feed("therapist").get_data(as_text=True)
    assert "welcome" not in feed and "the participant deleted them" in feed
    assert chat.auth.post("/account/delete", {}).status_code == 302
    assert rows(chat.settings, "SELECT count(*) FROM appointments") == [(0,)]
    for path in ("", "/feed", "/compose", "/history"):
        gone = chat.therapist.client.get(f"/en/chat/{chat.id}{path}")
        assert gone.status_code == 404, path
        assert "the participant's account was deleted" in gone.get_data(as_text=True)
    stranger = chat.therapist.client.get("/en/chat/" + "0" * 32)  # said no differently
    assert stranger.status_code == 404 and "account was deleted" in stranger.get_data(True)


def test_an_empty_chat_says_who_joins_when_and_that_writing_can_start(chat):
    chat.at(STARTS - 3 * 3600)  # not open yet: who and when, but no invitation to write
    feed = chat.feed("participant").get_data(as_text=True)
    assert "Anna will join you here at 17:00." in feed and "write already" not in feed
    chat.at(STARTS - 10 * 60)
    feed = chat.feed("participant").get_data(as_text=True)
    assert "Anna will join you here at 17:00." in feed  # in the participant's zone (UTC+0)
    assert "You can write already" in feed
    chat.at(STARTS + 5 * 60)
    assert "Anna will answer you here." in chat.feed("participant").get_data(as_text=True)
    chat.say("participant", "hello")
    assert "Anna will" not in chat.feed("participant").get_data(as_text=True)


def test_a_cancelled_appointment_is_not_called_a_deleted_account(chat):
    """A participant's cancellation removes the appointment: the portal must not claim more."""
    chat.clock.now = STARTS - 3 * 24 * 3600  # well before the 24 h cutoff
    chat.at(chat.clock.now)
    assert chat.auth.post(f"/appointments/{chat.id}/cancel").status_code == 302
    page = chat.therapist.client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
    assert "it was cancelled or moved" in page
    assert "account has been deleted" not in page


def test_an_ended_session_never_gets_a_304_for_the_feed_it_was_shown(chat):
    chat.at(STARTS)
    etag = chat.feed("participant").headers["ETag"]
    assert chat.feed("participant", **{"If-None-Match": etag}).status_code == 304
    cookie = chat.auth.client.get_cookie("stillroom", domain="127.0.0.1").value
    chat.auth.logout()
    chat.auth.client.set_cookie("stillroom", cookie, domain="127.0.0.1")  # the old cookie again
    again = chat.feed("participant", **{"If-None-Match": etag})
    assert again.status_code == 302 and "/login" in again.headers["Location"]


def test_another_participant_never_gets_a_304_or_the_feed_of_this_chat(chat, app):
    chat.at(STARTS)
    chat.say("therapist", "only for the one participant")
    etag = chat.feed("participant").headers["ETag"]
    stranger = AuthActions(app.test_client())
    stranger.create()
    other = stranger.client.get(f"/en/chat/{chat.id}/feed", headers={"If-None-Match": etag})
    assert other.status_code == 404
    assert "only for the one participant" not in other.get_data(as_text=True)


def test_a_new_session_of_the_same_person_is_checked_afresh(chat):
    chat.at(STARTS)
    etag = chat.feed("participant").headers["ETag"]
    chat.at(STARTS + 60)  # logs in again: a new session with the same page
    chat.say("therapist", "while you were away")
    fresh = chat.feed("participant", **{"If-None-Match": etag})
    assert fresh.status_code == 200 and "while you were away" in fresh.get_data(as_text=True)


def test_a_feed_changes_without_news_when_the_chat_is_closed_or_its_time_passes(chat, clock):
    chat.at(STARTS)
    chat.say("therapist", "hello")
    etag = chat.feed("participant").headers["ETag"]
    assert 'content="5"' in chat.feed("participant").get_data(as_text=True)
    assert chat.feed("participant", **{"If-None-Match": etag}).status_code == 304
    clock.advance(2 * 60 + 1)  # the therapist has been quiet: the feed reloads more slowly
    quieter = chat.feed("participant", **{"If-None-Match": etag})
    assert quieter.status_code == 200 and 'content="10"' in quieter.get_data(as_text=True)
    etag = quieter.headers["ETag"]
    chat.therapist.post(f"/en/chat/{chat.id}/close", page=f"/en/chat/{chat.id}")
    closed = chat.feed("participant", **{"If-None-Match": etag})
    assert closed.status_code == 200
    assert "The therapist has ended the chat" in closed.get_data(as_text=True)


def test_a_feed_says_the_chat_has_ended_once_its_time_is_up(chat, clock, settings):
    [[ends_at]] = rows(settings, "SELECT ends_at FROM appointments")
    chat.at(ends_at - 2 * 60)  # logging the therapist in may wait for a fresh TOTP step
    etag = chat.feed("participant").headers["ETag"]
    assert chat.feed("participant", **{"If-None-Match": etag}).status_code == 304
    clock.now = ends_at
    ended = chat.feed("participant", **{"If-None-Match": etag})
    assert ended.status_code == 200 and "The chat has ended" in ended.get_data(as_text=True)


@pytest.mark.parametrize("who", ["participant", "therapist"])
def test_the_live_and_paused_feeds_never_refresh_themselves(chat, who):
    """Where the script reloads the feed on news (``?live=1``), or the reader paused it
    (``?pause=1``), the feed has no timed refresh (WCAG 2.2.1); each is a page of its own."""
    chat.at(STARTS)
    chat.say("participant", "hello")
    plain = chat.feed(who)
    assert 'http-equiv="refresh"' in plain.get_data(as_text=True)
    etags = {plain.headers["ETag"]}
    for query in ("live=1", "pause=1"):
        page = chat.feed(who, query)
        html = page.get_data(as_text=True)
        assert page.status_code == 200 and "hello" in html, query
        assert "http-equiv" not in html and 'class="stale' not in html, query
        assert ("Updates are paused." in html) == (query == "pause=1")
        etags.add(page.headers["ETag"])
        # A browser that kept the plain feed gets this page, not a 304 for the other one.
        other = chat.feed(who, query, **{"If-None-Match": plain.headers["ETag"]})
        assert other.status_code == 200, query
    assert len(etags) == 3, "each variant has an ETag of its own"


def test_a_paused_feed_checks_once_and_resumes(chat):
    """The paused feed's links: check again (still paused) or go back to the plain feed."""
    chat.at(STARTS)
    paused = chat.feed("participant", "pause=1").get_data(as_text=True)
    assert re.search(r'<a href="\?pause=1">Check for new messages</a>', paused)
    assert re.search(r'<a href="feed">Resume updates</a>', paused)
    chat.say("therapist", "are you there?")
    again = chat.feed("participant", "pause=1").get_data(as_text=True)
    assert "are you there?" in again and "http-equiv" not in again
    for who, client in (("participant", chat.auth.client), ("therapist", chat.therapist.client)):
        page = client.get(f"/en/chat/{chat.id}").get_data(as_text=True)
        link = f'<a href="/en/chat/{chat.id}/feed?pause=1" target="feed">Pause updates</a>'
        assert link in page, who
        assert 'name="feed"' in page, who


def test_the_frames_opened_on_their_own_have_a_main_landmark_and_a_heading(chat):
    """The feed and compose documents each have ``main`` and an ``h1``; the message list
    can take the keyboard's focus and has a name."""
    chat.at(STARTS)
    for who in ("participant", "therapist"):
        feed = chat.feed(who).get_data(as_text=True)
        assert "<main><h1>Messages</h1>" in feed and feed.rstrip().endswith("</main>")
        assert '<ol class="messages" tabindex="0" aria-label="Messages">' in feed
        client = chat.auth.client if who == "participant" else chat.therapist.client
        compose = client.get(f"/en/chat/{chat.id}/compose").get_data(as_text=True)
        assert "<main><h1>Write a message</h1>" in compose
        assert compose.rstrip().endswith("</main>")


def test_a_deleted_conversation_is_never_answered_from_memory(chat, monkeypatch):
    """A deletion reaches every feed the browser may revalidate, also when nothing of the
    pair was held or written since the server started (its news counter was not known yet):
    no "not modified" keeps the deleted text on screen."""
    from stillroom.webapp.hub import HUB

    chat.at(STARTS)
    chat.say("participant", "please forget this")
    monkeypatch.setattr(HUB, "_versions", {})  # a restart: counters start from nothing
    paused = chat.feed("participant", "pause=1")
    assert "please forget this" in paused.get_data(as_text=True)
    assert chat.auth.post(f"/chat/{chat.id}/delete").status_code == 302
    again = chat.feed("participant", "pause=1", **{"If-None-Match": paused.headers["ETag"]})
    assert again.status_code == 200, "a 304 keeps the deleted conversation on screen"
    assert "please forget this" not in again.get_data(as_text=True)
