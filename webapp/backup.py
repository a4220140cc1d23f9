"""Backups that respect retention: a consistent copy, encrypted as it is written.

A backup holds the database, the key slots (``keys.slots``, without which nothing in
the database opens), ``server.key`` (without which nobody can log in) and the onion
service's key (its address). The database and the slots are read together while the
database's write lock is held, so they match; the archive is sealed to the operator's
X25519 public key as it is made (:class:`stillroom.crypto.stream.SealingWriter`), so
no plaintext copy is written anywhere, not even for a moment. The secret key belongs
offline.

A backup undoes crypto-shredding for as long as it is kept: it still holds the slot
keys of conversations and accounts deleted since. So a restore purges before anything
is served, and ``docs/operating.md`` says how long a backup may live.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tarfile
import time
from pathlib import Path

from stillroom.crypto.stream import SealingWriter, StreamOpenError, open_file_in_memory
from stillroom.webapp.instance import LOCK_FILE, RESERVE_FILE, prepare_instance
from stillroom.webapp.keyslots import SLOT_FILE
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction

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
    """Snapshot the database and the slots together, and seal them with the keys into ``fd``."""
    database, slots = _snapshot(settings)
    with os.fdopen(fd, "wb") as out:
        sealed = SealingWriter(out, public_key)
        with tarfile.open(fileobj=sealed, mode="w|") as tar:  # type: ignore[call-overload]
            _add_bytes(tar, DATABASE_MEMBER, database)
            _add_bytes(tar, SLOT_FILE, slots)
            for path in sorted(settings.data_dir.iterdir()):
                skipped = path.name.startswith(DATABASE_MEMBER) or path.name in (
                    RESERVE_FILE,
                    SLOT_FILE,
                    LOCK_FILE,  # names the serve that held it, which a restore never is
                )
                if path.is_file() and not skipped:
                    tar.add(path, arcname=path.name)
        sealed.close()


def _snapshot(settings: Settings) -> tuple[bytes, bytes]:
    """Return the database and the slot file as they are at one moment, in memory.

    Slots are taken only under the database's write lock, so holding it for the copy
    (a few milliseconds per megabyte) makes the two agree; a slot whose rows were deleted
    a moment before may still be in the copy, and the purge after a restore destroys it.
    """
    db = connect(settings.database_path)
    try:
        with transaction(db):
            database = db.conn.serialize()
            slots = (settings.data_dir / SLOT_FILE).read_bytes()
    finally:
        db.close()
    return database, slots


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(content)
    member.mode = 0o600
    tar.addfile(member, io.BytesIO(content))


def restore_backup(settings: Settings, backup: Path, secret_key: bytes) -> int:
    """Restore ``backup`` into an empty data directory, then purge; return rows purged.

    The backup is opened in memory: nothing is written into the data directory unless
    the whole backup opens. The purge then deletes what expired since, and destroys
    its keys, as it would have.

    :raises BackupError: when the data directory already holds a database, or the
        backup does not open with ``secret_key`` or holds anything unexpected.
    """
    if settings.database_path.exists():
        raise BackupError(
            f"{settings.data_dir} already holds a database; restore into an empty data"
            " directory (STILLROOM_DATA_DIR) and move it in place when the service is stopped"
        )
    try:
        plain = open_file_in_memory(backup, secret_key)
    except OSError as error:
        raise BackupError(f"cannot read {backup}: {error.strerror}") from error
    except StreamOpenError as error:
        raise BackupError(f"{backup} does not open with this key: {error}") from error
    with tarfile.open(fileobj=plain) as tar:
        members = tar.getmembers()
        names = [member.name for member in members]
        if DATABASE_MEMBER not in names or any(
            not member.isfile() or "/" in member.name or member.name.startswith(".")
            for member in members
        ):
            raise BackupError(f"{backup} holds something other than a Stillroom backup")
        present = [name for name in names if (settings.data_dir / name).exists()]
        if present:
            raise BackupError(
                f"{settings.data_dir} already holds {', '.join(present)}; restore into an"
                " empty data directory"
            )
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for member in members:
            content = tar.extractfile(member)
            assert content is not None  # a regular file, checked above
            target = os.open(
                settings.data_dir / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            with os.fdopen(target, "wb") as out:
                out.write(content.read())
    prepare_instance(settings)  # migrations of a newer version, if any
    db = connect(settings.database_path)
    try:
        return purge(db, int(time.time()), settings)
    finally:
        db.close()
