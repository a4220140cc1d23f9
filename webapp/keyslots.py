"""The data directory's key slots: where every deletable key lives, and how it dies.

Each participant, therapist, conversation, message day and therapist's note has a slot in the file
``keys.slots`` beside the database (:mod:`stillroom.crypto.slots`). What the database
stores for them (a wrapped secret key, sealed conversation keys, messages) is locked
under the slot's key as well, so deleting the row and then destroying the slot leaves
nothing on the disk that opens: not the row's stale copies in the write-ahead log,
not freed pages, not freed blocks of the filesystem. Every deletion (the purge, a
participant's own, a therapist reset, a restore's purge) ends in :func:`destroy_slots`.

Slots are created and destroyed only inside a write transaction, whose lock every
process shares; the purge destroys slots that no row names (left by a crash between a
commit and the destruction that follows it, or by a rolled-back creation).
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from stillroom.crypto.keys import unwrap_key, wrap_key
from stillroom.crypto.slots import NO_TAG, SlotFile, SlotGoneError

#: The slot file's name in the data directory.
SLOT_FILE = "keys.slots"

#: Every column that names a slot; a slot that none of them names is destroyed.
SLOT_COLUMNS = (
    ("participants", "slot"),
    ("therapists", "slot"),
    ("conversations", "slot"),
    ("day_keys", "slot"),
    ("allocation_lists", "slot"),
    ("notes", "slot"),
    ("study_participants", "slot"),
)

__all__ = ["SLOT_FILE", "SlotGoneError", "destroy_slots", "lock", "new_slot", "unlock"]


def slot_path(db: Database) -> Path:
    """Return the slot file that belongs to this database (in the same directory)."""
    database = db.execute("PRAGMA database_list").fetchone()[2]
    return Path(database).with_name(SLOT_FILE)


@contextmanager
def opened(db: Database) -> Iterator[SlotFile]:
    """Open the slot file for one operation (a few microseconds; nothing stays open)."""
    slots = SlotFile(slot_path(db))
    try:
        yield slots
    finally:
        slots.close()


def _require_write_lock(db: Database) -> None:
    if not db.conn.in_transaction:
        raise RuntimeError("slots are created and destroyed inside a write transaction")


class _TagIndex:
    """Where each account's tag is, kept in memory so that a login reads one slot, not all.

    Built from the file at the first lookup, and again whenever the file was written
    by anyone but this process (its identity, size or time of change moved). This
    process's own writes keep it current. Every hit is checked against the file, so an
    entry left by a deletion elsewhere finds nothing. Accounts are created only by the
    serving process, so what another process writes is deletions.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamp: tuple[int, int, int] | None = None
        self.slots: dict[bytes, set[int]] = {}


_INDEXES: dict[Path, _TagIndex] = {}
_INDEXES_LOCK = threading.Lock()


def _index(path: Path) -> _TagIndex:
    with _INDEXES_LOCK:
        return _INDEXES.setdefault(path, _TagIndex())


def _wrote(
    file: SlotFile, before: tuple[int, int, int], added: tuple[bytes, int] | None = None
) -> None:
    """Keep the tag index current after this process wrote the file (if it was current)."""
    index = _index(file.path)
    with index.lock:
        if index.stamp == before:
            if added is not None and added[0] != NO_TAG:
                index.slots.setdefault(added[0], set()).add(added[1])
            index.stamp = file.stamp()


def new_slot(db: Database, tag: bytes = NO_TAG) -> int:
    """Inside a write transaction: take a free slot with a fresh key; return its number."""
    _require_write_lock(db)
    with opened(db) as slots:
        before = slots.stamp()
        number = slots.create(tag)
        _wrote(slots, before, (tag, number))
        created: list[Doomed] = db.__dict__.setdefault("created_slots", [])
        created.append((number, slots.read(number)))
    return number


def discard_created(db: Database) -> int:
    """After a rolled-back transaction: destroy the slots it created (no row names them).

    Called by :func:`stillroom.webapp.store.transaction`, so that a write that failed
    leaves no key behind for the bytes it may have put in the write-ahead log.
    """
    created: list[Doomed] = db.__dict__.pop("created_slots", [])
    return destroy_slots(db, created)


def forget_created(db: Database) -> None:
    """After a committed transaction: its new slots are named by rows now."""
    db.__dict__.pop("created_slots", None)


def new_slots(db: Database, tags: list[bytes]) -> list[int]:
    """Inside a write transaction: fresh keys in new slots at the file's end, one per tag.

    For moving many objects into slots at once (one write and one ``fsync`` in all).
    """
    _require_write_lock(db)
    if not tags:
        return []
    with opened(db) as slots:
        return slots.append(tags)


def slot_key(db: Database, slot: int) -> bytes:
    """Return the key of ``slot``.

    :raises SlotGoneError: when it was destroyed.
    """
    with opened(db) as slots:
        return slots.key(slot)


def find_slots(db: Database, tag: bytes) -> list[int]:
    """Return the slots tagged ``tag`` (a participant's lookup hash): normally one or none.

    A lookup reads only the slots its index names (a wrong passphrase, none), so a
    flood of failed logins costs no scan of the file, however many accounts there are.
    """
    with opened(db) as slots:
        index = _index(slots.path)
        with index.lock:
            if index.stamp != slots.stamp():
                index.stamp = slots.stamp()
                index.slots = slots.tagged()
            candidates = sorted(index.slots.get(tag, ()))
        return [number for number in candidates if slots.read(number)[: len(tag)] == tag]


def lock(db: Database, slot: int, data: bytes) -> bytes:
    """Encrypt ``data`` under the key of ``slot`` (SecretBox), for storing in the database."""
    return wrap_key(data, slot_key(db, slot))


def unlock(db: Database, slot: int, locked: bytes) -> bytes:
    """Open what :func:`lock` made.

    :raises SlotGoneError: when the slot was destroyed.
    :raises stillroom.crypto.keys.UnwrapError: when ``locked`` belongs to another slot
        or was altered.
    """
    return unwrap_key(locked, slot_key(db, slot))


def deletion_day(ends_at: int, retention_days: int) -> str:
    """Return the UTC day on which what ends at ``ends_at`` is deleted, ``retention_days`` on.

    Rounded down to the day: it may go up to a day early, never late.
    """
    moment = ends_at + retention_days * 24 * 3600
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).date().isoformat()


def day_slot(db: Database, day: str) -> int:
    """Inside a write transaction: return the slot of the key of what is deleted on ``day``.

    Messages and cancellation notes are locked under their day's key; the purge destroys
    it on that day, so every stale copy of them dies with it.
    """
    row = db.execute("SELECT slot FROM day_keys WHERE expires_day = ?", [day]).fetchone()
    if row is not None:
        return int(row[0])
    slot = new_slot(db)
    db.table("day_keys").insert({"expires_day": day, "slot": slot})
    return slot


def day_key_slot(db: Database, day: str) -> int | None:
    """Return the slot of ``day``'s key, or ``None`` when the day has come (or never had one)."""
    row = db.execute("SELECT slot FROM day_keys WHERE expires_day = ?", [day]).fetchone()
    return None if row is None else int(row[0])


#: A slot to destroy once the deletion is saved, with what it held when it was chosen.
Doomed = tuple[int, bytes]


def doomed(db: Database, slots: Iterable[int | None]) -> list[Doomed]:
    """Inside the write transaction that deletes their rows: mark these slots for
    :func:`destroy_slots`, with what each holds now."""
    _require_write_lock(db)
    with opened(db) as file:
        return [(slot, file.read(slot)) for slot in slots if slot is not None]


def destroy_slots(db: Database, slots: list[Doomed]) -> int:
    """Overwrite these slots in place: whatever they locked can never be opened again.

    Called right after the transaction that deleted their rows has committed (should
    the process die in between, the next purge destroys them: no row names them). A
    slot that no longer holds what :func:`doomed` saw (another process's purge freed
    it meanwhile, and something new took it) is left alone.

    :returns: how many slots were overwritten.
    """
    if not slots:
        return 0
    with opened(db) as file:
        before = file.stamp()
        destroyed = file.destroy_unchanged(slots)
        _wrote(file, before)
        return destroyed


def referenced_slots(db: Database) -> set[int]:
    """Return every slot that a row names."""
    union = " UNION ".join(
        f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608 - constants
        for table, column in SLOT_COLUMNS
    )
    return {int(row[0]) for row in db.execute(union)}


def destroy_orphans(db: Database) -> int:
    """Inside a write transaction: destroy every slot that holds a key but no row names.

    :returns: how many went.
    """
    _require_write_lock(db)
    with opened(db) as slots:
        before = slots.stamp()
        destroyed = slots.destroy(slots.in_use() - referenced_slots(db))
        _wrote(slots, before)
        return destroyed
