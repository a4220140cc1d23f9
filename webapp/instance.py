"""The data directory: database, key slots and server secret, private to the service's user."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stillroom.crypto.keys import keyed_hash, random_bytes
from stillroom.webapp.keyslots import SLOT_FILE
from stillroom.webapp.settings import Settings, SettingsError
from stillroom.webapp.store import StoreUnwritableError, migrate, unwritable_path

#: The server secret: keys the account lookup hash, form tokens and pending passphrases.
SECRET_FILE = "server.key"  # noqa: S105 - a file name, not a secret
#: Space held for deletions (``DISK_RESERVE_MIB``): on a full disk SQLite cannot delete
#: either, since a deletion is written to the write-ahead log first.
RESERVE_FILE = "reserve"

log = logging.getLogger(__name__)
T = TypeVar("T")


def prepare_instance(settings: Settings) -> bytes:
    """Create the data directory (0700), the server secret (0600) and the database.

    :returns: the 32-byte server secret.
    :raises StoreUnwritableError: when the directory or the database cannot be written.
    """
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        secret = _read_or_create_secret(data_dir / SECRET_FILE)
        with_reserve(settings, lambda: migrate(settings.database_path))
        slots = data_dir / SLOT_FILE
        if not slots.exists():  # the database's first migration made it
            raise SettingsError(
                f"{slots} is missing: restore it from your encrypted backup (stillroom"
                " restore); without it no account, therapist or conversation opens"
            )
        slots.chmod(0o600)
    except OSError as error:
        problem = unwritable_path(error, data_dir)
        if problem is None:
            raise
        raise problem from error
    return secret


def _read_or_create_secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        secret = path.read_bytes()
        if len(secret) != 32:
            raise SettingsError(
                f"{path} is damaged (not 32 bytes): restore it from your encrypted backup;"
                " without it no participant can log in"
            ) from None
        return secret
    with os.fdopen(fd, "wb") as handle:
        handle.write(random_bytes(32))
    return path.read_bytes()


def subkey(secret: bytes, purpose: bytes) -> bytes:
    """Derive an independent key for one ``purpose`` from the server secret."""
    return keyed_hash(b"", secret, purpose)


def keep_reserve(settings: Settings) -> None:
    """Hold ``DISK_RESERVE_MIB`` of real blocks in the data directory, if there is room.

    Called after everything that may use it: once space is free again, the reserve is
    back. It is taken only when the rest of the disk keeps as much free again, so that
    taking it never fills the disk for anyone else (tor keeps its state here too).
    """
    path = settings.data_dir / RESERVE_FILE
    wanted = settings.disk_reserve_mib * 1024 * 1024
    if wanted == 0:
        path.unlink(missing_ok=True)
        return
    try:
        held = path.stat().st_blocks * 512 if path.exists() else 0
        if held >= wanted:
            if path.stat().st_size > wanted:
                os.truncate(path, wanted)  # DISK_RESERVE_MIB was lowered
            return
        disk = os.statvfs(settings.data_dir)
        if disk.f_bavail * disk.f_frsize < 2 * wanted - held:
            return  # not enough room yet: try again after the next deletion or purge
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return  # a read-only directory: nothing to hold
    try:
        os.posix_fallocate(fd, 0, wanted)  # allocated, not sparse; reads as zeros
    except OSError:
        os.ftruncate(fd, 0)  # lost a race for the space: hold nothing half-taken
    finally:
        os.close(fd)


def with_reserve(settings: Settings, action: Callable[[], T]) -> T:
    """Run ``action``; on a full disk, give back the reserve and run it once more.

    For what must happen even on a full disk: deleting (SQLite writes a deletion to its
    log first, so it needs free space too) what has expired, or what a participant asks
    to be rid of, and opening the database at startup.

    :raises StoreUnwritableError: when the database cannot be written even so.
    """
    try:
        done = action()
    except StoreUnwritableError as problem:
        if not (problem.disk_full and release_reserve(settings)):
            raise
        log.warning("the disk is full: gave back the reserve to delete or open the database")
        done = action()
    keep_reserve(settings)
    return done


def release_reserve(settings: Settings) -> bool:
    """Give the reserve back to the filesystem; return whether there was one to give."""
    path = settings.data_dir / RESERVE_FILE
    held = path.exists() and path.stat().st_blocks > 0
    path.unlink(missing_ok=True)
    return held
