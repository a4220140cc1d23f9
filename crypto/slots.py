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

import os
from collections.abc import Iterable
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

    Callers that create or destroy slots must hold the database's write lock (a
    ``BEGIN IMMEDIATE`` transaction): it is the one lock every process shares, so two
    processes never take the same free slot.

    :param path: the slot file; it must exist (:func:`create_slot_file`).
    :param writable: ``False`` to only read it (an audit).
    """

    def __init__(self, path: Path, writable: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def _read_all(self) -> bytes:
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0)

    def create(self, tag: bytes = NO_TAG) -> int:
        """Put a fresh random key (and ``tag``) in a free slot and return its number.

        The slot is on disk (``fsync``) before this returns.
        """
        if len(tag) != TAG_BYTES:
            raise ValueError("a tag has 32 bytes")
        content = self._read_all()
        number = _first_free(content)
        if number is None:
            number = len(content) // SLOT_BYTES
            self._grow(number + GROW_SLOTS)
        key = nacl.utils.random(KEY_BYTES)
        os.pwrite(self._fd, tag + key, number * SLOT_BYTES)
        os.fsync(self._fd)
        return number

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

        It reads the whole file (64 bytes per account, conversation and day): a few
        milliseconds for a hundred thousand slots, and no index to keep anywhere.
        """
        if tag == NO_TAG:
            return []
        content = self._read_all()
        found = []
        start = content.find(tag)
        while start >= 0:
            if start % SLOT_BYTES == 0:
                found.append(start // SLOT_BYTES)
            start = content.find(tag, start + 1)
        return found

    def destroy(self, numbers: Iterable[int]) -> int:
        """Overwrite the slots ``numbers`` with zeros in place, then ``fsync``.

        :returns: how many slots held a key until now.
        """
        destroyed = 0
        for number in sorted(set(numbers)):
            if number < 0:
                continue
            offset = number * SLOT_BYTES
            if os.pread(self._fd, SLOT_BYTES, offset) in (FREE, b""):
                continue
            os.pwrite(self._fd, FREE, offset)
            destroyed += 1
        if destroyed:
            os.fsync(self._fd)
        return destroyed

    def in_use(self) -> set[int]:
        """Return the numbers of every slot that holds a key."""
        content = self._read_all()
        return {
            number
            for number in range(len(content) // SLOT_BYTES)
            if content[number * SLOT_BYTES : (number + 1) * SLOT_BYTES] != FREE
        }


def _first_free(content: bytes) -> int | None:
    start = content.find(FREE)
    while start >= 0:
        if start % SLOT_BYTES == 0:
            return start // SLOT_BYTES
        start = content.find(FREE, start + 1)
    return None


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
