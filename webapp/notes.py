"""A therapist's private notes about one participant, kept across a course of sessions.

Messages are deleted some days after each appointment, so by the fourth session the
first is gone; the notes are what the therapist keeps instead. There is one note per
participant-therapist pair (the ``pairs`` row, which is the participant's pseudonym
for that therapist), in plain text, never shown to the participant.

A note is padded, sealed to the therapist's public key (only their secret key opens
it) and locked under a key slot of its own. Every save takes a new slot and destroys
the old one, so what a therapist deletes from a note opens nowhere on the disk. The
slot is destroyed when the note goes: the purge, ``NOTE_RETENTION_DAYS`` after the
last change, or for a study's participant on the day the study's research data is
erased, whichever comes first; the participant deleting the account (the pair goes
with it); and a reset of the therapist, whose old key pair could never open it again.
"""

from __future__ import annotations

import datetime
import unicodedata
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.crypto.box import UnsealError, open_sealed, seal
from stillroom.crypto.keys import UnwrapError
from stillroom.webapp.keyslots import (
    SlotGoneError,
    destroy_slots,
    doomed,
    lock,
    new_slot,
    unlock,
)
from stillroom.webapp.store import checkpoint, transaction

#: The longest note, in characters: room for a course of sessions, not for a file.
MAX_NOTE_CHARS = 8000
#: Sizes (bytes of UTF-8) a note is padded to before sealing, so its row tells little
#: about its length. The largest fits the longest note in any script.
BUCKETS = (1024, 4096, 16384, 4 * MAX_NOTE_CHARS)


class NoteError(Exception):
    """Base class of the note errors."""


class NoteTooLongError(NoteError):
    """The note is longer than :data:`MAX_NOTE_CHARS`."""


class NoteLockedError(NoteError):
    """The note cannot be opened with this key (it was sealed to another)."""


@dataclass(frozen=True)
class Note:
    """A note as its therapist reads it."""

    text: str
    #: The UTC day (ISO) of the last change; the retention counts from it.
    edited_day: str


def clean_note(raw: str) -> str:
    """Return a note as it is stored: NFC, ``\\n`` line breaks, no other control characters.

    :raises NoteTooLongError: when it is longer than :data:`MAX_NOTE_CHARS`.
    """
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(
        char
        for char in text
        if char in ("\n", "\t") or unicodedata.category(char) not in ("Cc", "Cs")
    )
    text = "\n".join(line.rstrip() for line in text.strip().split("\n"))
    if len(text) > MAX_NOTE_CHARS:
        raise NoteTooLongError
    return text


def _pad(text: str) -> bytes:
    """UTF-8, padded with NUL bytes (a cleaned note has none) to its bucket."""
    data = text.encode()
    size = next(bucket for bucket in BUCKETS if len(data) <= bucket)
    return data.ljust(size, b"\0")


def participant_of(db: Database, therapist_id: str, pseudonym: str) -> str | None:
    """Return the participant this therapist knows as ``pseudonym``, if any."""
    row = db.execute(
        "SELECT participant_id FROM pairs WHERE therapist_id = ? AND pseudonym = ?",
        [therapist_id, pseudonym.strip().upper()],
    ).fetchone()
    return None if row is None else str(row[0])


def read_note(
    db: Database, therapist_id: str, participant_id: str, secret_key: bytes
) -> Note | None:
    """Return the therapist's note about this participant, or ``None`` when there is none.

    :raises NoteLockedError: when ``secret_key`` does not open it.
    """
    row = db.execute(
        "SELECT slot, body, edited_day FROM notes WHERE therapist_id = ? AND participant_id = ?",
        [therapist_id, participant_id],
    ).fetchone()
    if row is None:
        return None
    slot, body, edited_day = row
    try:
        padded = open_sealed(unlock(db, slot, body), secret_key)
        return Note(padded.rstrip(b"\0").decode(), str(edited_day))
    except (SlotGoneError, UnwrapError, UnsealError, UnicodeDecodeError):
        raise NoteLockedError from None


def save_note(db: Database, therapist_id: str, participant_id: str, text: str, now: int) -> None:
    """Replace the therapist's note about this participant with ``text`` (empty: delete it).

    The new version is sealed to the therapist's public key under a new slot; the old
    slot is destroyed once this is saved.

    :raises NoteTooLongError: when ``text`` is longer than :data:`MAX_NOTE_CHARS`.
    :raises NoteLockedError: when the therapist has no key pair (reset, not enrolled again).
    """
    text = clean_note(text)
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
    with transaction(db):
        (public_key,) = db.execute(
            "SELECT public_key FROM therapists WHERE id = ?", [therapist_id]
        ).fetchone()
        if public_key is None:
            raise NoteLockedError
        old = note_slots(db, therapist_id=therapist_id, participant_id=participant_id)
        db.execute(
            "DELETE FROM notes WHERE therapist_id = ? AND participant_id = ?",
            [therapist_id, participant_id],
        )
        if text:
            slot = new_slot(db)
            db.table("notes").insert(
                {
                    "participant_id": participant_id,
                    "therapist_id": therapist_id,
                    "slot": slot,
                    "body": lock(db, slot, seal(_pad(text), public_key)),
                    "edited_day": today,
                }
            )
        gone = doomed(db, old)
    destroy_slots(db, gone)
    checkpoint(db)  # the old version must not linger in the write-ahead log


def note_slots(
    db: Database, therapist_id: str | None = None, participant_id: str | None = None
) -> list[int]:
    """Return the slots of the notes of a therapist, of a participant, or of their pair.

    For the deletions that take the notes with them, inside their write transaction.
    """
    if therapist_id is None and participant_id is None:
        raise ValueError("name a therapist, a participant or both")
    rows = db.execute(
        "SELECT slot FROM notes WHERE coalesce(therapist_id = :therapist, 1)"
        " AND coalesce(participant_id = :participant, 1)",
        {"therapist": therapist_id, "participant": participant_id},
    )
    return [int(row[0]) for row in rows]


def purge_notes(db: Database, now: int, retention_days: int) -> int:
    """Delete the notes last changed ``retention_days`` or more days ago; destroy their slots.

    :returns: how many notes went.
    """
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    cutoff = (today - datetime.timedelta(days=retention_days)).isoformat()
    with transaction(db):
        old = [
            int(row[0])
            for row in db.execute("SELECT slot FROM notes WHERE edited_day <= ?", [cutoff])
        ]
        db.execute("DELETE FROM notes WHERE edited_day <= ?", [cutoff])
        gone = doomed(db, old)
    destroy_slots(db, gone)
    return len(old)


def delete_study_notes(db: Database) -> list[int]:
    """Inside the study's erasure: delete every note about a study participant.

    A note about someone in a study is research-adjacent: it must not outlive the
    study's research data, whatever the note retention allows.

    :returns: the slots to destroy once the transaction is committed.
    """
    where = "participant_id IN (SELECT participant_id FROM study_participants)"
    slots = [int(row[0]) for row in db.execute(f"SELECT slot FROM notes WHERE {where}")]  # noqa: S608
    db.execute(f"DELETE FROM notes WHERE {where}")  # noqa: S608
    return slots
