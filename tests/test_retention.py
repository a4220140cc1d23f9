"""One purge enforces every retention, and what it deletes leaves no bytes on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from stillroom.webapp.app import create_portal_app
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

from support import (
    ENDS,
    FAST_ARGON2,
    STARTS,
    Chat,
    LoopbackClient,
    TherapistActions,
    rows,
    stillroom_env,
)

DAY = 24 * 3600
#: Canaries: texts that must never be found in the raw files once they are gone.
CANARIES = ("canary-participant-5d1e warm words", "canary-therapist-a07c kind reply")


def raw_files(data_dir: Path) -> bytes:
    """Every byte of every file in the data directory: database, -wal, -shm and keys."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.rglob("*")) if path.is_file())


def write_canaries(chat: Chat) -> list[bytes]:
    """Send both canaries; return what would betray them on disk.

    That is each text (in UTF-8 and UTF-16), and each stored envelope's nonce and
    ciphertext (a version byte, a 24-byte nonce, then the ciphertext).
    """
    chat.at(STARTS)
    assert chat.say("participant", CANARIES[0]).status_code == 200
    assert chat.say("therapist", CANARIES[1]).status_code == 200
    envelopes = [row[0] for row in rows(chat.settings, "SELECT envelope FROM messages")]
    assert len(envelopes) == 2
    traces = [text.encode() for text in CANARIES] + [text.encode("utf-16-le") for text in CANARIES]
    for envelope in envelopes:
        traces += [envelope[1:25], envelope[25:57], envelope[-32:]]
    everything = raw_files(chat.settings.data_dir)
    assert all(trace in everything for trace in traces[4:]), "the scan sees the envelopes"
    return traces


def assert_no_trace(chat: Chat, traces: list[bytes]) -> None:
    everything = raw_files(chat.settings.data_dir)
    found = [trace for trace in traces if trace in everything]
    assert found == [], f"{len(found)} traces of deleted messages left on disk"
    wal = chat.settings.database_path.with_name("stillroom.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the purge truncates the log"


def test_expired_messages_leave_no_bytes_on_disk(chat, settings, clock):
    traces = write_canaries(chat)
    db = connect(settings.database_path)
    try:
        clock.now = ENDS + 14 * DAY  # the default retention
        assert purge(db, int(clock()), settings) > 0
    finally:
        db.close()
    assert rows(settings, "SELECT count(*) FROM messages") == [(0,)]
    assert_no_trace(chat, traces)


def test_a_conversation_deleted_now_leaves_no_bytes_on_disk(chat, settings):
    traces = write_canaries(chat)
    response = chat.auth.post(f"/chat/{chat.id}/delete")
    assert response.status_code == 302
    assert_no_trace(chat, traces)


def test_a_deleted_account_leaves_no_bytes_on_disk(chat, settings):
    traces = write_canaries(chat)
    response = chat.auth.post("/account/delete")
    assert response.status_code == 302, response.get_data(as_text=True)
    assert rows(settings, "SELECT count(*) FROM participants") == [(0,)]
    assert_no_trace(chat, traces)


def test_an_account_unused_for_the_retention_period_is_deleted(chat, settings, clock):
    chat.at(STARTS)
    chat.say("participant", "see you next month")
    last_login = STARTS
    db = connect(settings.database_path)
    try:
        clock.now = last_login + 179 * DAY
        purge(db, int(clock()), settings)
        assert db.execute("SELECT count(*) FROM participants").fetchone() == (1,)
        clock.now = last_login + 180 * DAY
        purge(db, int(clock()), settings)
        for table in ("participants", "pairs", "appointments", "conversations", "messages"):
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        assert db.execute("SELECT count(*) FROM therapists").fetchone() == (1,)
    finally:
        db.close()


def test_the_purge_is_idempotent(chat, settings, clock):
    chat.at(STARTS)
    chat.say("participant", "something to expire")
    db = connect(settings.database_path)
    try:
        clock.now = ENDS + 400 * DAY
        assert purge(db, int(clock()), settings) > 0
        assert purge(db, int(clock()), settings) == 0
    finally:
        db.close()


def fail_to_log_in(therapist, times: int) -> list[int]:
    """Enrol a therapist, log out, and fail ``times`` logins with a wrong code."""
    therapist.create()
    therapist.logout()
    return [therapist.login(code="000000").status_code for _ in range(times)]


def test_failed_login_counts_are_forgotten_after_a_while(therapist, settings, clock):
    assert fail_to_log_in(therapist, 3) == [401, 401, 401]
    assert rows(settings, "SELECT failed_logins FROM therapists") == [(3,)]
    db = connect(settings.database_path)
    try:
        clock.now += 14 * 60
        purge(db, int(clock()), settings)
        assert db.execute("SELECT failed_logins FROM therapists").fetchone() == (3,)
        clock.now += 2 * 60
        purge(db, int(clock()), settings)
        assert db.execute(
            "SELECT failed_logins, locked_until, failures_expire_at FROM therapists"
        ).fetchone() == (0, 0, 0)
    finally:
        db.close()


def test_a_pause_is_kept_until_it_ends(therapist, settings, clock):
    fail_to_log_in(therapist, 6)
    [(locked_until,)] = rows(settings, "SELECT locked_until FROM therapists")
    assert locked_until > clock()
    db = connect(settings.database_path)
    try:
        purge(db, int(clock()), settings)
        assert db.execute("SELECT locked_until FROM therapists").fetchone() == (locked_until,)
        clock.now = locked_until
        purge(db, int(clock()), settings)
        assert db.execute("SELECT locked_until FROM therapists").fetchone() == (0,)
    finally:
        db.close()
    code = pyotp.TOTP(therapist.secret).at(clock() + 30)
    assert therapist.login(code=code).status_code == 302


def test_stillroom_purge_runs_on_demand(tmp_path):
    data_dir = tmp_path / "instance"
    data_dir.mkdir()  # only serve creates a missing one
    env = stillroom_env(data_dir, 0)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), "purge"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "STILLROOM_DATA_DIR": str(data_dir)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Purged 0 rows in ")
    assert (data_dir / "stillroom.db").exists()
    assert os.stat(data_dir).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("days", ["29", "3651", "soon"])
def test_the_account_retention_has_sane_bounds(tmp_path, days):
    env = stillroom_env(tmp_path / "instance", 0, {"STILLROOM_ACCOUNT_RETENTION_DAYS": days})
    result = subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), "purge"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "STILLROOM_ACCOUNT_RETENTION_DAYS" in result.stderr


def test_the_pause_and_the_enrolment_link_follow_the_settings(tmp_path, clock):
    settings = Settings.load(
        {},
        data_dir=tmp_path / "instance",
        login_pause_minutes=2,
        enrolment_link_hours=3,
        **FAST_ARGON2,
    )
    portal_app = create_portal_app(settings, clock=clock)
    portal_app.test_client_class = LoopbackClient
    therapist = TherapistActions(portal_app.test_client(), clock, settings.database_path)
    paused = fail_to_log_in(therapist, 6)[-1]
    assert paused == 429
    [(locked_until,)] = rows(settings, "SELECT locked_until FROM therapists")
    assert locked_until == int(clock()) + 120
    page = therapist.login(code="000000").get_data(as_text=True)
    assert "paused for 2 minutes" in page

    env = stillroom_env(settings.data_dir, 0, {"STILLROOM_ENROLMENT_LINK_HOURS": "3"})
    before = int(time.time())
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("stillroom")),
            "therapist",
            "add",
            "--name",
            "Linus",
            "--languages",
            "en",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert "The link works once, for 3 hours." in result.stdout
    [(expires_at,)] = rows(
        settings,
        "SELECT expires_at FROM enrolments JOIN therapists ON therapists.id = therapist_id"
        " WHERE name = 'Linus'",
    )
    assert before + 3 * 3600 <= expires_at <= int(time.time()) + 3 * 3600


def test_a_clock_that_jumps_resurrects_nothing_and_the_purge_stays_right(chat, settings, clock):
    chat.at(STARTS)
    assert chat.say("participant", "before the jumps").status_code == 200
    # A message's expiry follows its appointment's end, not the clock that wrote it.
    assert rows(settings, "SELECT expires_day FROM messages") == [("2027-02-01",)]
    db = connect(settings.database_path)
    try:
        clock.now = STARTS - 365 * DAY  # far back: nothing is purged early
        assert purge(db, int(clock()), settings) == 0
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        clock.now = ENDS + 30 * DAY  # far forward: all of it is past its retention
        assert purge(db, int(clock()), settings) > 0
        gone = ("messages", "conversations", "appointments", "sessions", "therapist_sessions")
        for table in gone:
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        clock.now = STARTS  # and back again: what went stays gone, nothing more goes
        assert purge(db, int(clock()), settings) == 0
        for table in gone:
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        assert db.execute("SELECT count(*) FROM participants").fetchone() == (1,)
    finally:
        db.close()
    assert chat.auth.client.get("/en/account").status_code == 302  # its session went too
