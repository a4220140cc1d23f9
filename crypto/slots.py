"""Key slots: random keys in a file of fixed slots, destroyed by overwriting them in place.

SQLite cannot forget: a deleted row's old page survives in the write-ahead log, in
freed blocks of the filesystem, in a journal. So every key that must be deletable
(a participant's or a therapist's wrapped key, a conversation's sealed keys, a day's
message key) is additionally encrypted under a random *slot key*, and slot keys live
in one file of fixed 64-byte slots. Deleting an object overwrites its slot with zeros,
at the same offset, and calls ``fsync``: on ext4 (``data=ordered``, the default) a data
block that a file already owns is rewritten where it lies, and only metadata is
journalled, so no copy of the slot key is left in the file, its journal or freed
blocks. Every stale copy of what the slot key guarded, wherever SQLite left it, is
then ciphertext without a key. ``docs/auditing.md`` says where this promise ends
(copy-on-write filesystems, ``data=journal``, SSDs, snapshots, backups).

A slot is 32 bytes of *tag* and 32 bytes of key. The tag lets a participant's account
be found by a keyed hash of the passphrase without that hash ever entering the
database: when the account goes, its tag is overwritten with its key. Other slots
have a zero tag. A slot of 64 zero bytes is free.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nacl.utils

#: Bytes of a slot: the tag, then the key. 64 divides every sector and block size,
#: so overwriting one slot never touches two blocks.
SLOT_BYTES = 64
TAG_BYTES = 32
KEY_BYTES = 32
NO_TAG = bytes(TAG_BYTES)
FREE = bytes(SLOT_BYTES)
#: Slots added at once when none is free (16 KiB, written as zeros before use, so
#: that every later write of a key overwrites blocks the file already owns).
GROW_SLOTS = 256


class SlotGoneError(Exception):
    """The slot holds no key: the object it guarded was deleted."""


class SlotFile:
    """The file of key slots, opened once for reading and overwriting in place.

    Callers that create slots must hold the database's write lock (a ``BEGIN IMMEDIATE``
    transaction): it is the one lock every process shares, so two processes never take
    the same free slot. Every write also holds an exclusive lock on the file itself, so
    that :meth:`destroy_unchanged` compares and overwrites in one step.

    :param path: the slot file; it must exist (:func:`create_slot_file`).
    :param writable: ``False`` to only read it (an audit).
    """

    def __init__(self, path: Path, writable: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the file's exclusive lock: no other process writes a slot meanwhile."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _read_all(self) -> bytes:
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0)

    def create(self, tag: bytes = NO_TAG) -> int:
        """Put a fresh random key (and ``tag``) in a free slot and return its number.

        The slot is on disk (``fsync``) before this returns.
        """
        if len(tag) != TAG_BYTES:
            raise ValueError("a tag has 32 bytes")
        with self._writing():
            content = self._read_all()
            number = _first_free(content)
            if number is None:
                number = len(content) // SLOT_BYTES
                self._grow(number + GROW_SLOTS)
            os.pwrite(self._fd, tag + nacl.utils.random(KEY_BYTES), number * SLOT_BYTES)
            os.fsync(self._fd)
        return number

    def append(self, tags: list[bytes]) -> list[int]:
        """Put fresh keys for ``tags`` in new slots at the end, with one ``fsync``.

        For filling a new slot file at once (moving an older data directory over),
        where one :meth:`create` each would scan the file and sync once per slot.
        """
        with self._writing():
            first = os.fstat(self._fd).st_size // SLOT_BYTES
            records = b"".join(tag + nacl.utils.random(KEY_BYTES) for tag in tags)
            pad = bytes(-(first + len(tags)) % GROW_SLOTS * SLOT_BYTES)
            os.pwrite(self._fd, records + pad, first * SLOT_BYTES)
            os.fsync(self._fd)
        return list(range(first, first + len(tags)))

    def _grow(self, slots: int) -> None:
        """Extend the file to ``slots`` slots, written out as zeros."""
        size = os.fstat(self._fd).st_size
        os.pwrite(self._fd, bytes(slots * SLOT_BYTES - size), size)
        os.fsync(self._fd)

    def _slot(self, number: int) -> bytes:
        if number < 0:
            raise SlotGoneError(number)
        content = os.pread(self._fd, SLOT_BYTES, number * SLOT_BYTES)
        if len(content) != SLOT_BYTES or content[TAG_BYTES:] == bytes(KEY_BYTES):
            raise SlotGoneError(number)
        return content

    def key(self, number: int) -> bytes:
        """Return the key in slot ``number``.

        :raises SlotGoneError: when the slot was destroyed (or never existed).
        """
        return self._slot(number)[TAG_BYTES:]

    def tag(self, number: int) -> bytes:
        """Return the tag of slot ``number``.

        :raises SlotGoneError: when the slot was destroyed.
        """
        return self._slot(number)[:TAG_BYTES]

    def find(self, tag: bytes) -> list[int]:
        """Return the slots whose tag is ``tag`` (one, or two for a moment while it moves).

        It reads the whole file (64 bytes per account, conversation and day), a few
        milliseconds for a hundred thousand slots: logins look through an index in memory
        instead (:func:`stillroom.webapp.keyslots.find_slots`).
        """
        if tag == NO_TAG:
            return []
        return list(_aligned(self._read_all(), tag))

    def read(self, number: int) -> bytes:
        """Return slot ``number`` as it is (tag and key), to destroy it later if unchanged."""
        return os.pread(self._fd, SLOT_BYTES, number * SLOT_BYTES)

    def destroy(self, numbers: Iterable[int]) -> int:
        """Overwrite the slots ``numbers`` with zeros in place, then ``fsync``.

        :returns: how many slots held a key until now.
        """
        with self._writing():
            return self._overwrite(
                number for number in numbers if number >= 0 and self.read(number) not in (FREE, b"")
            )

    def destroy_unchanged(self, seen: Iterable[tuple[int, bytes]]) -> int:
        """Overwrite each slot that still holds what was ``seen`` in it, then ``fsync``.

        A slot freed by another process meanwhile, and perhaps taken again for something
        new, holds something else: it is left alone.

        :param seen: ``(number, contents)`` pairs read with :meth:`read`.
        :returns: how many slots were overwritten.
        """
        with self._writing():
            return self._overwrite(
                number for number, before in seen if before != FREE and self.read(number) == before
            )

    def _overwrite(self, numbers: Iterable[int]) -> int:
        """Zero these slots (the caller holds the file's lock); ``fsync`` once."""
        destroyed = 0
        for number in sorted(set(numbers)):
            if number >= 0:
                os.pwrite(self._fd, FREE, number * SLOT_BYTES)
                destroyed += 1
        if destroyed:
            os.fsync(self._fd)
        return destroyed

    def stamp(self) -> tuple[int, int, int]:
        """Return the file's identity, size and time of change, to notice writes by others."""
        status = os.fstat(self._fd)
        return status.st_ino, status.st_size, status.st_mtime_ns

    def tagged(self) -> dict[bytes, set[int]]:
        """Return where every tag is (for an index of them, built once)."""
        content = self._read_all()
        where: dict[bytes, set[int]] = {}
        for offset in range(0, len(content) - SLOT_BYTES + 1, SLOT_BYTES):
            tag = content[offset : offset + TAG_BYTES]
            if tag != NO_TAG:
                where.setdefault(tag, set()).add(offset // SLOT_BYTES)
        return where

    def in_use(self) -> set[int]:
        """Return the numbers of every slot that holds a key."""
        content = self._read_all()
        return {
            number
            for number in range(len(content) // SLOT_BYTES)
            if content[number * SLOT_BYTES : (number + 1) * SLOT_BYTES] != FREE
        }


def _aligned(content: bytes, needle: bytes) -> Iterator[int]:
    """Yield the number of every slot that starts with ``needle``."""
    start = content.find(needle)
    while start >= 0:
        if start % SLOT_BYTES == 0:
            yield start // SLOT_BYTES
        start = content.find(needle, start + 1)


def _first_free(content: bytes) -> int | None:
    return next(_aligned(content, FREE), None)


def create_slot_file(path: Path) -> None:
    """Create an empty slot file, readable by its owner only.

    :raises FileExistsError: when it exists (a slot file is never replaced: that
        would leave its old blocks, keys and all, free on the disk).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
