"""``stillroom audit``: the live data directory against the promises, one breach at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.crypto.slots import SlotFile
from stillroom.webapp import audit, server
from stillroom.webapp.store import connect

from support import STARTS, Chat, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def run_audit(data_dir: Path, extra: dict[str, str] | None = None, *options: str):
    env = stillroom_env(data_dir, 0, extra)
    return subprocess.run(
        [STILLROOM, "audit", *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def report(data_dir: Path, extra: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_audit(data_dir, extra, "--json")
    return result.returncode, json.loads(result.stdout)


def failing(found: dict) -> list[str]:
    return [check["name"] for check in found["checks"] if not check["ok"]]


@pytest.fixture
def live(chat: Chat, settings) -> Path:
    """A data directory in use: a booked appointment and a conversation with messages."""
    chat.at(STARTS)
    assert chat.say("participant", "hello").status_code == 200
    assert chat.say("therapist", "welcome").status_code == 200
    return settings.data_dir


def test_a_healthy_instance_passes_every_check(live):
    status, found = report(live)
    assert status == 0 and found["ok"] is True, found
    names = {check["name"] for check in found["checks"]}
    assert names == {
        "schema",
        "retention",
        "envelopes",
        "key-slots",
        "passphrases",
        "pragmas",
        "permissions",
        "onion",
        "access-log",
        "study-log",
        "assist",
    }
    readable = run_audit(live)
    assert readable.returncode == 0
    assert "All checks hold." in readable.stdout


def change(data_dir: Path, *statements: str) -> None:
    db = connect(data_dir / "stillroom.db")
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("broken", "statements", "words"),
    [
        ("schema", ["ALTER TABLE participants ADD COLUMN email TEXT"], "participants.email"),
        (
            "retention",
            ["UPDATE messages SET expires_day = '2000-01-01' WHERE seq = 1"],
            "1 messages past their expiry day",
        ),
        (
            "retention",
            ["UPDATE participants SET last_login_day = '2000-01-01'"],
            "1 unused accounts",
        ),
        (
            "envelopes",
            ["UPDATE messages SET envelope = zeroblob(length(envelope)) WHERE seq = 1"],
            "1 of 2 messages",
        ),
        (
            "envelopes",
            ["UPDATE messages SET envelope = CAST('hello in clear' AS BLOB) WHERE seq = 2"],
            "1 of 2 messages",
        ),
    ],
)
def test_a_breach_in_the_database_fails_the_audit_for_its_reason(live, broken, statements, words):
    change(live, *statements)
    status, found = report(live)
    assert status == 1 and found["ok"] is False
    assert failing(found) == [broken]
    [detail] = [check["detail"] for check in found["checks"] if check["name"] == broken]
    assert words in detail


def test_a_key_that_outlives_its_row_fails_the_audit(live):
    """A deleted conversation whose slot was never overwritten: a disk copy would open it."""
    change(live, "DELETE FROM messages", "DELETE FROM conversations")
    status, found = report(live)
    assert status == 1 and failing(found) == ["key-slots"]
    [detail] = [check["detail"] for check in found["checks"] if check["name"] == "key-slots"]
    assert "1 keys outlive what they locked" in detail


def test_a_therapist_with_a_chosen_password_fails_the_audit(live):
    change(live, "UPDATE therapists SET renew_passphrase = 1")
    status, found = report(live)
    assert status == 1 and failing(found) == ["passphrases"]


def test_a_row_whose_key_is_gone_fails_the_audit(live):
    db = connect(live / "stillroom.db")
    slots = SlotFile(live / "keys.slots")
    try:
        [(slot,)] = db.execute("SELECT slot FROM conversations").fetchall()
        slots.destroy([slot])
    finally:
        slots.close()
        db.close()
    status, found = report(live)
    assert status == 1 and failing(found) == ["key-slots"]
    [detail] = [check["detail"] for check in found["checks"] if check["name"] == "key-slots"]
    assert "1 rows name a slot without a key" in detail


def test_a_database_out_of_wal_mode_fails_the_audit(live, chat):
    for client in (chat.auth.client, chat.therapist.client):  # WAL mode needs them gone
        pool = client.application.extensions["stillroom_db_pool"]
        while pool:
            pool.pop().close()
    change(live, "PRAGMA journal_mode=DELETE")
    status, found = report(live)
    assert status == 1 and failing(found) == ["pragmas"]


def test_a_file_others_can_read_fails_the_audit(live):
    (live / "stillroom.db").chmod(0o644)
    status, found = report(live)
    assert status == 1 and failing(found) == ["permissions"]
    [detail] = [check["detail"] for check in found["checks"] if check["name"] == "permissions"]
    assert "stillroom.db" in detail


def test_a_link_in_the_data_directory_fails_the_audit_with_a_line_not_a_crash(live, tmp_path):
    (live / "elsewhere").symlink_to(tmp_path / "nothing-here")  # dangling
    status, found = report(live)
    assert status == 1 and failing(found) == ["permissions"]
    [detail] = [check["detail"] for check in found["checks"] if check["name"] == "permissions"]
    assert "links to elsewhere" in detail and "elsewhere" in detail


def test_extra_torrc_lines_that_weaken_the_service_fail_the_audit(live, tmp_path):
    extra = tmp_path / "extra.torrc"
    extra.write_text("SafeLogging 0\n")
    status, found = report(live, {"STILLROOM_TOR_EXTRA_CONFIG": str(extra)})
    assert status == 1 and failing(found) == ["onion"]


def test_proof_of_work_turned_off_fails_the_audit(live):
    status, found = report(live, {"STILLROOM_POW_QUEUE_RATE": "0"})
    assert status == 1 and failing(found) == ["onion"]


def test_an_access_log_fails_the_audit(live, settings, monkeypatch):
    monkeypatch.setattr(server, "ACCESS_LOG", sys.stderr)
    checks = audit.run_audit(settings, STARTS)
    assert [check.name for check in checks if not check.ok] == ["access-log"]


def test_the_audit_changes_nothing(live):
    def files() -> dict[str, bytes]:
        # The -shm file is SQLite's index of the log, which every reader updates; no data.
        return {p.name: p.read_bytes() for p in live.iterdir() if p.suffix != ".db-shm"}

    change(live, "UPDATE participants SET last_login_day = '2000-01-01'")
    before = files()
    assert report(live)[0] == 1
    assert files() == before, "the audit reports a breach and leaves it for the auditor"
