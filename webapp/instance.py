"""The data directory: database, key slots and server secret, private to the service's user."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
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
#: Held (flock) by the one ``stillroom serve`` of this data directory; it holds that
#: process's PID and whether it runs tor, for the messages of the others.
LOCK_FILE = "serve.lock"

log = logging.getLogger(__name__)
T = TypeVar("T")


class DataDirError(Exception):
    """The data directory is missing, cannot be a directory, or its lock is not a file."""


class DataDirInUseError(Exception):
    """Another ``stillroom serve`` holds the data directory."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        super().__init__(
            f"{data_dir} is in use by another 'stillroom serve' ({holder}): stop it first, or"
            " give this one a data directory of its own (STILLROOM_DATA_DIR) and other ports"
        )


def check_data_dir(data_dir: Path, must_exist: bool) -> None:
    """Refuse a data directory that is a file or lies below one, or is missing when it must exist.

    Only ``serve`` (and ``restore``) create the directory: any other command run from the
    wrong folder would otherwise start a new, empty instance there without a word.

    :raises DataDirError: with the path and the setting to fix.
    """
    where = data_dir.absolute()
    for path in (where, *where.parents):
        if path.exists() and not path.is_dir():
            what = "is a file" if path == where else f"lies below the file {path}"
            raise DataDirError(
                f"the data directory {where} {what}: set STILLROOM_DATA_DIR to a directory"
            )
    if must_exist and not where.exists():
        raise DataDirError(
            f"the data directory {where} does not exist: set STILLROOM_DATA_DIR to the one"
            " 'stillroom serve' uses, or start 'stillroom serve' once to create it"
        )


def lock_data_dir(settings: Settings, mode: str) -> int:
    """Take the data directory for this ``serve`` alone, creating it (0700) if needed.

    Two servers on one data directory would run two purges and two tors with one key.
    The lock belongs to the open file, so it goes when the process ends, however it
    ends: a crash never leaves a stale lock behind. On a full disk the reserve makes
    room for the lock file, as it does for opening the database.

    :param mode: ``tor`` or ``no-tor``, for ``stillroom onion status`` to read.
    :returns: the lock file's descriptor, to keep open while serving.
    :raises DataDirInUseError: when another process holds it.
    :raises OSError: when the directory cannot be created or written.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return _take_lock(settings.data_dir, mode)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT) or not release_reserve(settings):
            raise
        log.warning("the disk is full: gave back the reserve to lock the data directory")
        return _take_lock(settings.data_dir, mode)


#: A reader of the lock (``onion status``) holds it shared for a moment: a serve retries.
LOCK_TRIES = 10
LOCK_RETRY_SECONDS = 0.1


def _take_lock(data_dir: Path, mode: str) -> int:
    fd = _open_lock(data_dir, os.O_RDWR | os.O_CREAT)
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 < LOCK_TRIES:
                time.sleep(LOCK_RETRY_SECONDS)
                continue
            holder = read_holder(fd)
            os.close(fd)
            raise DataDirInUseError(data_dir.absolute(), _describe(holder)) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{mode}\n".encode("ascii"), 0)
    except OSError:
        os.close(fd)  # and with it the lock, so that a second try can take it
        raise
    return fd


def _describe(holder: tuple[str, str] | None) -> str:
    """Name the process in the lock file, unless it is gone (a serve killed, a reader)."""
    if holder is None:
        return "its PID not written yet"
    try:
        os.kill(int(holder[0]), 0)
    except (ValueError, ProcessLookupError):
        return "or a reader of its lock: the PID in the file has ended; try again in a moment"
    except PermissionError:
        pass  # it runs, as another user
    return f"PID {holder[0]}"


def _open_lock(data_dir: Path, flags: int) -> int:
    """Open the lock file itself, never what a link in its place points to.

    Whoever can write in the data directory could otherwise have serve truncate any
    file it can open, the server secret first.

    :raises DataDirError: when the lock file is a link or not a plain file of its own.
    """
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataDirError(f"{path.absolute()} is a link; remove it and start again") from None
        raise
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(fd)
        raise DataDirError(f"{path.absolute()} is not a plain file; remove it and start again")
    return fd


def read_holder(fd: int) -> tuple[str, str] | None:
    """Return the PID and mode a lock file holds, or ``None`` while it is being written."""
    lines = os.pread(fd, 64, 0).decode("ascii", "replace").split()
    return (lines[0], lines[1]) if len(lines) == 2 else None


def running_serve(data_dir: Path) -> tuple[str, str] | None:
    """Return the PID and mode of the ``serve`` that holds ``data_dir``, or ``None``."""
    try:
        fd = _open_lock(data_dir, os.O_RDONLY)
    except (FileNotFoundError, DataDirError):
        return None  # no serve could hold a lock that is not a plain file
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(fd) or ("unknown", "starting")
    else:
        return None  # nobody holds it; closing the file lets go at once
    finally:
        os.close(fd)


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
