"""Backups: consistent, encrypted to the operator, and purged on restore."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.crypto.stream import (
    CHUNK_BYTES,
    StreamOpenError,
    new_recipient_keypair,
    open_stream,
    seal_stream,
)
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

from support import FAST_ARGON2, STARTS, AuthActions, Chat, LoopbackClient, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
CANARY = "canary-backup-91b4 what I said"


def stillroom(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def operator_key(tmp_path: Path) -> tuple[str, Path]:
    """The operator's key pair, made with the command: (public key, secret key file)."""
    secret = tmp_path / "offline" / "backup.secret"
    secret.parent.mkdir()
    result = stillroom("backup-key", str(secret), env=stillroom_env(tmp_path / "unused", 0))
    assert result.returncode == 0, result.stderr
    assert secret.stat().st_mode & 0o777 == 0o600
    public = result.stdout.split("STILLROOM_BACKUP_PUBLIC_KEY=", 1)[1].strip()
    return public, secret


def back_up(data_dir: Path, destination: Path, public: str) -> subprocess.CompletedProcess[str]:
    env = stillroom_env(data_dir, 0, {"STILLROOM_BACKUP_PUBLIC_KEY": public})
    return stillroom("backup", str(destination), env=env)


def test_a_backup_restores_into_a_working_instance(chat: Chat, settings, tmp_path, operator_key):
    public, secret = operator_key
    chat.at(STARTS)
    assert chat.say("participant", CANARY).status_code == 200
    (settings.data_dir / "serve.lock").write_text("4242 tor\n")  # as a running serve holds it
    destination = tmp_path / "stillroom.sealed"
    result = back_up(settings.data_dir, destination, public)
    assert result.returncode == 0, result.stderr
    sealed = destination.read_bytes()
    assert destination.stat().st_mode & 0o777 == 0o600
    assert CANARY.encode() not in sealed and b"SQLite format 3" not in sealed
    assert b"CREATE TABLE" not in sealed, "the schema is encrypted too"
    reserve = (settings.data_dir / "reserve").stat().st_size
    assert reserve > 0 and len(sealed) < reserve, "the disk reserve stays out of the backup"

    restored = tmp_path / "restored"
    env = stillroom_env(restored, 0)
    result = stillroom("restore", str(destination), "--secret-key", str(secret), env=env)
    assert result.returncode == 0, result.stderr
    assert (restored / "server.key").read_bytes() == (settings.data_dir / "server.key").read_bytes()
    assert restored.stat().st_mode & 0o777 == 0o700
    assert not (restored / "serve.lock").exists(), "a restore never names an old serve"
    assert all(path.stat().st_mode & 0o077 == 0 for path in restored.iterdir())
    db = connect(restored / "stillroom.db")
    try:
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    # The copy is whole: its audit holds, and the participant's passphrase opens it.
    assert stillroom("audit", env=env).returncode == 0
    assert (restored / "keys.slots").read_bytes() == (settings.data_dir / "keys.slots").read_bytes()
    copy = Settings.load({}, data_dir=restored, disk_reserve_mib=1, **FAST_ARGON2)
    participant = AuthActions(create_participant_app(copy, clock=chat.clock).test_client())
    participant.client.__class__ = LoopbackClient
    assert participant.login(chat.passphrase).status_code == 302
    feed = participant.client.get(f"/en/chat/{chat.id}/feed").get_data(as_text=True)
    assert CANARY in feed, "the restored conversation opens"


def test_a_restore_purges_what_expired_since_the_backup(chat, settings, tmp_path, operator_key):
    public, secret = operator_key
    chat.at(STARTS)
    assert chat.say("participant", CANARY).status_code == 200
    assert chat.say("therapist", "and a reply").status_code == 200
    # A backup taken before the first message's expiry day, restored after it.
    db = connect(settings.database_path)
    try:
        db.execute("UPDATE messages SET expires_day = '2000-01-01' WHERE seq = 1")
    finally:
        db.close()
    destination = tmp_path / "old.sealed"
    assert back_up(settings.data_dir, destination, public).returncode == 0
    restored = tmp_path / "restored"
    env = stillroom_env(restored, 0)
    result = stillroom("restore", str(destination), "--secret-key", str(secret), env=env)
    assert result.returncode == 0, result.stderr
    assert "purged 1 rows" in result.stdout
    assert rows_in(restored, "messages") == 1
    assert CANARY.encode() not in b"".join(p.read_bytes() for p in restored.iterdir())


def rows_in(data_dir: Path, table: str) -> int:
    db = connect(data_dir / "stillroom.db")
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def test_restore_refuses_the_wrong_key_a_changed_backup_and_a_full_data_dir(
    chat, settings, tmp_path, operator_key
):
    public, secret = operator_key
    destination = tmp_path / "stillroom.sealed"
    assert back_up(settings.data_dir, destination, public).returncode == 0
    other = tmp_path / "other.secret"
    assert stillroom("backup-key", str(other), env=stillroom_env(tmp_path / "x", 0)).returncode == 0
    restored = tmp_path / "restored"
    env = stillroom_env(restored, 0)
    wrong = stillroom("restore", str(destination), "--secret-key", str(other), env=env)
    assert wrong.returncode == 1 and "does not open with this key" in wrong.stderr
    assert not (restored / "stillroom.db").exists()

    changed = tmp_path / "changed.sealed"
    data = bytearray(destination.read_bytes())
    data[len(data) // 2] ^= 1
    changed.write_bytes(bytes(data))
    bad = stillroom("restore", str(changed), "--secret-key", str(secret), env=env)
    assert bad.returncode == 1 and not (restored / "stillroom.db").exists()

    full = stillroom(
        "restore",
        str(destination),
        "--secret-key",
        str(secret),
        env=stillroom_env(settings.data_dir, 0),
    )
    assert full.returncode == 1 and "already holds a database" in full.stderr


def test_backup_needs_the_operators_public_key(settings, tmp_path):
    settings.data_dir.mkdir()  # a data directory in use, as serve leaves it
    result = stillroom(
        "backup", str(tmp_path / "b.sealed"), env=stillroom_env(settings.data_dir, 0)
    )
    assert result.returncode == 1 and "STILLROOM_BACKUP_PUBLIC_KEY" in result.stderr
    assert not (tmp_path / "b.sealed").exists()


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 7])
def test_a_sealed_stream_opens_whole_and_only_whole(size):
    public, secret = new_recipient_keypair()
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sealed = io.BytesIO()
    seal_stream(io.BytesIO(data), sealed, public)
    opened = io.BytesIO()
    open_stream(io.BytesIO(sealed.getvalue()), opened, secret)
    assert opened.getvalue() == data
    cut = sealed.getvalue()[: len(sealed.getvalue()) - 20]
    with pytest.raises(StreamOpenError):
        open_stream(io.BytesIO(cut), io.BytesIO(), secret)
    with pytest.raises(StreamOpenError):
        open_stream(io.BytesIO(sealed.getvalue() + b"more"), io.BytesIO(), secret)
