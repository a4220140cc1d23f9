"""Backups that respect retention: a consistent copy, encrypted to the operator's key.

A backup holds the database, copied with SQLite's online backup API while the server
runs, and the data directory's keys (``server.key``, without which nobody can log in,
and the onion service's key, which is its address). It is sealed to the operator's
X25519 public key (:mod:`stillroom.crypto.stream`); the secret key belongs offline.

A backup undoes crypto-shredding for as long as it is kept: it still holds the keys of
conversations deleted since. So a restore purges before anything is served, and
``docs/operating.md`` says how long a backup may live.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path

from stillroom.crypto.stream import StreamOpenError, open_stream, seal_stream
from stillroom.webapp.instance import RESERVE_FILE, prepare_instance
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

#: The database's name inside a backup (the other members keep their own names).
DATABASE_MEMBER = "stillroom.db"


class BackupError(Exception):
    """A backup cannot be written or restored; the message says what to do."""


def decode_key(text: str, what: str) -> bytes:
    """Return the 32-byte key written as base64 in ``text``.

    :raises BackupError: when it is not a base64 key of 32 bytes.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BackupError(f"{what} is not a base64 key of 32 bytes")
    return key


def write_backup(settings: Settings, destination: Path, public_key: bytes) -> int:
    """Write an encrypted, consistent backup of the data directory to ``destination``.

    :returns: the size of the backup in bytes.
    :raises BackupError: when ``destination`` already exists.
    """
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{destination} exists; choose a new name") from None
    try:
        _write_sealed(settings, fd, public_key)
    except BaseException:
        destination.unlink()  # no half-written backup to mistake for a whole one
        raise
    return destination.stat().st_size


def _write_sealed(settings: Settings, fd: int, public_key: bytes) -> None:
    """Copy the database consistently, pack it with the keys, and seal the lot into ``fd``."""
    # The plain copy lives next to the database it copies, as private as that database.
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as work, os.fdopen(fd, "wb") as out:
        copy = Path(work) / DATABASE_MEMBER
        source = connect(settings.database_path)
        target = sqlite3.connect(copy)
        try:
            source.conn.backup(target)
        finally:
            target.close()
            source.close()
        archive = Path(work) / "backup.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(copy, arcname=DATABASE_MEMBER)
            for path in sorted(settings.data_dir.iterdir()):
                skipped = path.name.startswith(DATABASE_MEMBER) or path.name == RESERVE_FILE
                if path.is_file() and not skipped:
                    tar.add(path, arcname=path.name)
        with archive.open("rb") as plain:
            seal_stream(plain, out, public_key)


def restore_backup(settings: Settings, backup: Path, secret_key: bytes) -> int:
    """Restore ``backup`` into an empty data directory, then purge; return rows purged.

    Nothing is written into the data directory unless the whole backup opens.

    :raises BackupError: when the data directory already holds a database, or the
        backup does not open with ``secret_key`` or holds anything unexpected.
    """
    if settings.database_path.exists():
        raise BackupError(
            f"{settings.data_dir} already holds a database; restore into an empty data"
            " directory (STILLROOM_DATA_DIR) and move it in place when the service is stopped"
        )
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as work:
        archive = Path(work) / "backup.tar"
        try:
            with backup.open("rb") as sealed, archive.open("wb") as plain:
                open_stream(sealed, plain, secret_key)
        except OSError as error:
            raise BackupError(f"cannot read {backup}: {error.strerror}") from error
        except StreamOpenError as error:
            raise BackupError(f"{backup} does not open with this key: {error}") from error
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            names = [member.name for member in members]
            if DATABASE_MEMBER not in names or any(
                not member.isfile() or "/" in member.name or member.name.startswith(".")
                for member in members
            ):
                raise BackupError(f"{backup} holds something other than a Stillroom backup")
            tar.extractall(settings.data_dir, filter="data")
    for name in names:
        (settings.data_dir / name).chmod(0o600)
    prepare_instance(settings)  # migrations of a newer version, if any
    db = connect(settings.database_path)
    try:
        return purge(db, int(time.time()), settings)
    finally:
        db.close()
