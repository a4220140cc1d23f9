"""Availability and appointments: therapists publish slots, participants book them.

All times are UTC timestamps; :mod:`stillroom.webapp.times` turns wall-clock input
into them and back. Every change runs in one ``BEGIN IMMEDIATE`` transaction, so
two participants can never both book one slot, and a move either completes or
leaves the old appointment as it was.
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from stillroom.crypto.box import UnsealError, open_sealed, seal
from stillroom.crypto.keys import UnwrapError, readable_code
from stillroom.webapp.hub import HUB
from stillroom.webapp.keyslots import (
    SlotGoneError,
    day_key_slot,
    day_slot,
    deletion_day,
    lock,
    unlock,
)
from stillroom.webapp.store import checkpoint, transaction

MIN_DURATION_MINUTES = 15
MAX_DURATION_MINUTES = 180
MAX_WEEKS = 12
MAX_NOTE_CHARS = 500
#: Therapists publish at most this far ahead (seconds).
MAX_AHEAD_SECONDS = 366 * 24 * 3600


class BookingError(Exception):
    """Base class of the booking errors; each one has its own calm message."""


class NotFoundError(BookingError):
    """No such slot or appointment for this user (another user's objects look the same)."""


class SlotTakenError(BookingError):
    """Someone else booked this slot a moment earlier."""


class SlotUnavailableError(BookingError):
    """The slot has started, is too close, or is not offered in this language."""


class BookingLimitError(BookingError):
    """The participant already has as many upcoming appointments as allowed."""


class BookingBlockedError(BookingError):
    """A therapist has stopped this account from booking (the page says so neutrally)."""


class AccountTooNewError(BookingError):
    """Without a study, an account books only once it is old enough (``opens_at``)."""

    def __init__(self, opens_at: int) -> None:
        super().__init__(opens_at)
        self.opens_at = opens_at


class IntakeIncompleteError(BookingError):
    """In a study, an account books only once its intake is complete."""


class SessionsStoppedError(BookingError):
    """In a study, the participant chose to stop the sessions: no more booking."""


class TooLateError(BookingError):
    """The appointment is within the cutoff and can no longer be changed."""


class SlotBookedError(BookingError):
    """A booked slot cannot be deleted; cancel the appointment instead."""


class SlotInputError(BookingError):
    """A slot cannot be published: in the past, bad duration or languages.

    :param reason: ``"past"``, ``"far"``, ``"duration"``, ``"weeks"`` or ``"languages"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OverlapError(BookingError):
    """A new slot overlaps one the therapist already has, from ``starts_at`` to ``ends_at``."""

    def __init__(self, starts_at: int, ends_at: int) -> None:
        super().__init__(starts_at, ends_at)
        self.starts_at = starts_at
        self.ends_at = ends_at


@dataclass(frozen=True)
class Slot:
    """A published time, with who offers it and whether it is booked."""

    id: str
    therapist_id: str
    therapist_name: str
    starts_at: int
    ends_at: int
    languages: tuple[str, ...]
    pseudonym: str | None  # the participant's, when booked (therapist view only)


@dataclass(frozen=True)
class Appointment:
    """A booked (or therapist-cancelled) appointment."""

    id: str
    therapist_name: str
    starts_at: int
    ends_at: int
    language: str
    cancelled: bool
    cancel_note: bytes | None
    pseudonym: str
    chat_extra_minutes: int
    #: The therapist ended the chat early: the appointment is over.
    chat_closed: bool = False

    def closes_at(self) -> int:
        """When its chat stops taking messages, the therapist's extensions included."""
        return self.ends_at + self.chat_extra_minutes * 60


def new_id() -> str:
    """Return a random id for a slot or appointment (unguessable, reveals nothing)."""
    return secrets.token_hex(16)


def publish_slots(
    db: Database,
    therapist_id: str,
    starts: list[int],
    duration_minutes: int,
    languages: tuple[str, ...],
    offered: tuple[str, ...],
    now: int,
    for_participant: str | None = None,
) -> list[str]:
    """Publish one slot per start time, all or none.

    :param starts: UTC start times (one, or one per week of a weekly pattern).
    :param offered: the languages this therapist works in.
    :param for_participant: the one participant who may book it (a proposed next time),
        or ``None`` for everyone.
    :raises SlotInputError: for a start in the past or more than a year ahead, a
        duration out of range, too many weeks, or languages the therapist does not offer.
    :raises OverlapError: when a slot would overlap another of this therapist's.
    """
    if not MIN_DURATION_MINUTES <= duration_minutes <= MAX_DURATION_MINUTES:
        raise SlotInputError("duration")
    if not 1 <= len(starts) <= MAX_WEEKS:
        raise SlotInputError("weeks")
    if not languages or not set(languages) <= set(offered):
        raise SlotInputError("languages")
    if min(starts) <= now:
        raise SlotInputError("past")
    if max(starts) > now + MAX_AHEAD_SECONDS:
        raise SlotInputError("far")
    length = duration_minutes * 60
    ids = []
    with transaction(db):
        for start in sorted(starts):
            clash = db.execute(
                "SELECT starts_at, ends_at FROM slots WHERE therapist_id = ? AND starts_at < ?"
                " AND ends_at > ? ORDER BY starts_at LIMIT 1",
                [therapist_id, start + length, start],
            ).fetchone()
            if clash is not None:
                raise OverlapError(*clash)
            slot_id = new_id()
            db.table("slots").insert(
                {
                    "id": slot_id,
                    "therapist_id": therapist_id,
                    "starts_at": start,
                    "ends_at": start + length,
                    "languages": ",".join(languages),
                    "for_participant": for_participant,
                }
            )
            ids.append(slot_id)
    return ids


def delete_free_slot(db: Database, therapist_id: str, slot_id: str) -> None:
    """Withdraw one of the therapist's free slots.

    :raises NotFoundError: when the slot is not theirs or does not exist.
    :raises SlotBookedError: when someone has booked it.
    """
    with transaction(db):
        row = db.execute(
            "SELECT (SELECT count(*) FROM appointments WHERE slot_id = slots.id)"
            " FROM slots WHERE id = ? AND therapist_id = ?",
            [slot_id, therapist_id],
        ).fetchone()
        if row is None:
            raise NotFoundError
        if row[0]:
            raise SlotBookedError
        db.execute("DELETE FROM slots WHERE id = ?", [slot_id])


#: Whose times participants may book: enrolled therapists the operator has not disabled.
_BOOKABLE = "therapists.disabled = 0 AND therapists.slot IS NOT NULL"

#: Whether the slot was made for one participant other than ``?`` (a proposed next time).
_RESERVED = "coalesce(slots.for_participant != ?, 0)"

#: Whether the therapist withholds their times from the participant ``?``: the account was
#: made on or after the day of a block that asked for it (days, never times, are compared).
_WITHHELD = """EXISTS (SELECT 1 FROM participants WHERE participants.id = ?
    AND participants.created_day >= therapists.withhold_from_day)"""

_SLOT_QUERY = """
    SELECT slots.id, slots.therapist_id, therapists.name, slots.starts_at, slots.ends_at,
           slots.languages, pairs.pseudonym
    FROM slots
    JOIN therapists ON therapists.id = slots.therapist_id
    LEFT JOIN appointments ON appointments.slot_id = slots.id
    LEFT JOIN pairs ON pairs.participant_id = appointments.participant_id
                   AND pairs.therapist_id = slots.therapist_id
"""


def _slot(row: Any) -> Slot:
    slot_id, therapist_id, name, starts_at, ends_at, languages, pseudonym = row
    return Slot(
        id=str(slot_id),
        therapist_id=str(therapist_id),
        therapist_name=str(name),
        starts_at=int(starts_at),
        ends_at=int(ends_at),
        languages=tuple(str(languages).split(",")),
        pseudonym=None if pseudonym is None else str(pseudonym),
    )


def therapist_slots(db: Database, therapist_id: str, now: int) -> list[Slot]:
    """Return the therapist's slots that have not ended, free and booked, by time."""
    rows = db.execute(
        _SLOT_QUERY + " WHERE slots.therapist_id = ? AND slots.ends_at > ?"
        " ORDER BY slots.starts_at",
        [therapist_id, now],
    ).fetchall()
    return [_slot(row) for row in rows]


def free_slots(
    db: Database,
    language: str,
    earliest: int,
    until: int,
    participant_id: str = "",
    therapists: frozenset[str] | None = None,
) -> list[Slot]:
    """Return the free slots offered in ``language`` starting from ``earliest`` to ``until``.

    Callers keep ``earliest`` at least the booking notice (a setting) from now. Times
    made for one participant (proposed next times) are never listed: they are
    confirmed from the account page.

    :param participant_id: who is looking: times a therapist withholds from their
        account are left out.
    :param therapists: only these therapists' times (the course's); ``None``: anyone's.
    """
    rows = db.execute(
        _SLOT_QUERY + f" WHERE appointments.id IS NULL AND {_BOOKABLE}"
        f" AND NOT {_WITHHELD} AND slots.for_participant IS NULL"
        " AND slots.starts_at >= ? AND slots.starts_at < ?"
        " AND instr(',' || slots.languages || ',', ?) > 0"
        " ORDER BY slots.starts_at, therapists.name",
        [participant_id, earliest, until, f",{language},"],
    ).fetchall()
    found = [_slot(row) for row in rows]
    return [slot for slot in found if therapists is None or slot.therapist_id in therapists]


def book(
    db: Database,
    participant_id: str,
    slot_id: str,
    language: str,
    now: int,
    max_upcoming: int,
    cutoff_seconds: int,
    replacing: str | None = None,
    notice_seconds: int = 0,
    therapists: frozenset[str] | None = None,
) -> str:
    """Book a free slot for a participant, or move ``replacing`` onto it; return its id.

    A slot must start at least ``notice_seconds`` after ``now`` (the views pass the
    deployment's ``booking_notice_minutes``); one that has started is never booked.

    :param therapists: only these therapists' times may be booked (the course's rule,
        :mod:`stillroom.webapp.study.course`); ``None``: anyone's.

    :raises NotFoundError: for a ``replacing`` that is not theirs.
    :raises SlotTakenError: when another participant holds the slot.
    :raises SlotUnavailableError: when the slot is gone (or never was), starts too soon,
        is not offered in ``language``, or its therapist withholds it from this account.
    :raises BookingLimitError: when the participant has enough upcoming appointments.
    :raises BookingBlockedError: when a therapist has stopped this account from booking.
    :raises TooLateError: when the appointment to move is within the cutoff.
    """
    try:
        with transaction(db):
            if replacing is not None:
                _release(db, participant_id, replacing, now, cutoff_seconds)
            row = db.execute(
                "SELECT slots.therapist_id, slots.starts_at, slots.ends_at, slots.languages,"  # noqa: S608 - constants only
                f" NOT ({_BOOKABLE}) OR {_WITHHELD} OR {_RESERVED},"
                " (SELECT count(*) FROM appointments WHERE slot_id = slots.id)"
                " FROM slots JOIN therapists ON therapists.id = slots.therapist_id"
                " WHERE slots.id = ?",
                [participant_id, participant_id, slot_id],
            ).fetchone()
            if row is None:  # withdrawn meanwhile, or an id that never existed
                raise SlotUnavailableError
            therapist_id, starts_at, ends_at, languages, unbookable, booked = row
            if booked:
                raise SlotTakenError
            if (
                unbookable
                or (therapists is not None and therapist_id not in therapists)
                or starts_at < now + notice_seconds
                or language not in languages.split(",")
            ):
                raise SlotUnavailableError
            if is_blocked(db, participant_id):
                raise BookingBlockedError
            if len(upcoming_appointments(db, participant_id, now)) >= max_upcoming:
                raise BookingLimitError
            appointment_id = new_id()
            db.table("appointments").insert(
                {
                    "id": appointment_id,
                    "slot_id": slot_id,
                    "participant_id": participant_id,
                    "therapist_id": therapist_id,
                    "starts_at": starts_at,
                    "ends_at": ends_at,
                    "language": language,
                }
            )
            _ensure_pair(db, participant_id, therapist_id)
    except sqlite3.IntegrityError:  # the UNIQUE slot_id: a writer got there first
        raise SlotTakenError from None
    if replacing is not None:
        checkpoint(db)  # the moved-from appointment must not linger in the write-ahead log
    return appointment_id


def _release(
    db: Database, participant_id: str, appointment_id: str, now: int, cutoff_seconds: int
) -> None:
    row = db.execute(
        "SELECT starts_at FROM appointments WHERE id = ? AND participant_id = ? AND cancelled = 0",
        [appointment_id, participant_id],
    ).fetchone()
    if row is None:
        raise NotFoundError
    if row[0] - now < cutoff_seconds:
        raise TooLateError
    db.execute("DELETE FROM appointments WHERE id = ?", [appointment_id])


def _ensure_pair(db: Database, participant_id: str, therapist_id: str) -> None:
    """Give the participant a random pseudonym for this therapist, once."""
    if db.execute(
        "SELECT 1 FROM pairs WHERE participant_id = ? AND therapist_id = ?",
        [participant_id, therapist_id],
    ).fetchone():
        return
    while True:
        pseudonym = readable_code()
        taken = db.execute(
            "SELECT 1 FROM pairs WHERE therapist_id = ? AND pseudonym = ?",
            [therapist_id, pseudonym],
        ).fetchone()
        if not taken:
            break
    db.table("pairs").insert(
        {"participant_id": participant_id, "therapist_id": therapist_id, "pseudonym": pseudonym}
    )


def cancel_by_participant(
    db: Database, participant_id: str, appointment_id: str, now: int, cutoff_seconds: int
) -> None:
    """Cancel the participant's appointment; the slot is free again at once.

    :raises NotFoundError: when it is not theirs, or already cancelled.
    :raises TooLateError: within the cutoff.
    """
    with transaction(db):
        _release(db, participant_id, appointment_id, now, cutoff_seconds)
    checkpoint(db)
    HUB.publish_participant(participant_id)  # an open chat page says it is cancelled


def dismiss_cancelled(db: Database, participant_id: str, appointment_id: str) -> None:
    """Remove an appointment the therapist cancelled from the participant's page.

    :raises NotFoundError: when it is not theirs or not cancelled.
    """
    with transaction(db):
        gone = db.execute(
            "DELETE FROM appointments WHERE id = ? AND participant_id = ? AND cancelled = 1",
            [appointment_id, participant_id],
        )
        if gone.rowcount != 1:
            raise NotFoundError
    checkpoint(db)


def cancel_by_therapist(
    db: Database,
    therapist_id: str,
    appointment_id: str,
    note: str,
    now: int,
    retention_days: int,
) -> None:
    """Cancel an upcoming appointment with a note for the participant; the slot goes.

    The note is sealed to the participant's public key, so only they can read it, and
    locked under the key of the day the appointment is deleted, so that no copy of it
    outlives that day.

    :param note: the note, or ``""`` for none.
    :param retention_days: how long appointments are kept after they end.
    :raises NotFoundError: when it is not theirs, over, or cancelled already.
    """
    with transaction(db):
        row = db.execute(
            "SELECT appointments.slot_id, appointments.ends_at, participants.public_key,"
            " participants.id"
            " FROM appointments JOIN participants ON participants.id = participant_id"
            " WHERE appointments.id = ? AND therapist_id = ? AND cancelled = 0 AND ends_at > ?",
            [appointment_id, therapist_id, now],
        ).fetchone()
        if row is None:
            raise NotFoundError
        slot_id, ends_at, public_key, participant_id = row
        locked = None
        if note:
            day = day_slot(db, deletion_day(ends_at, retention_days))
            locked = lock(db, day, seal(note.encode(), public_key))
        db.execute(
            "UPDATE appointments SET cancelled = 1, cancel_note = ? WHERE id = ?",
            [locked, appointment_id],
        )
        if slot_id is not None:
            db.execute("DELETE FROM slots WHERE id = ?", [slot_id])
    HUB.publish_participant(participant_id)  # an open chat page says it is cancelled


def open_cancel_note(
    db: Database, appointment: Appointment, secret_key: bytes, retention_days: int
) -> str | None:
    """Return the therapist's note on a cancelled appointment, for its participant.

    ``None`` when there is none, or it can no longer be opened (its day has come).
    """
    if appointment.cancel_note is None:
        return None
    note = appointment.cancel_note
    slot = day_key_slot(db, deletion_day(appointment.ends_at, retention_days))
    try:
        sealed = unlock(db, slot, note) if slot is not None else note
    except (SlotGoneError, UnwrapError):
        sealed = note  # a note from before day keys was only sealed
    try:
        return open_sealed(sealed, secret_key).decode()
    except (UnsealError, UnicodeDecodeError):
        return None


_APPOINTMENT_QUERY = """
    SELECT appointments.id, therapists.name, appointments.starts_at, appointments.ends_at,
           appointments.language, appointments.cancelled, appointments.cancel_note,
           pairs.pseudonym, appointments.chat_extra_minutes, appointments.chat_closed
    FROM appointments
    JOIN therapists ON therapists.id = appointments.therapist_id
    JOIN pairs ON pairs.participant_id = appointments.participant_id
              AND pairs.therapist_id = appointments.therapist_id
"""


def _appointment(row: Any) -> Appointment:
    (
        appointment_id,
        name,
        starts_at,
        ends_at,
        language,
        cancelled,
        note,
        pseudonym,
        extra,
        closed,
    ) = row
    return Appointment(
        id=str(appointment_id),
        therapist_name=str(name),
        starts_at=int(starts_at),
        ends_at=int(ends_at),
        language=str(language),
        cancelled=bool(cancelled),
        cancel_note=None if note is None else bytes(note),
        pseudonym=str(pseudonym),
        chat_extra_minutes=int(extra),
        chat_closed=bool(closed),
    )


def upcoming_appointments(db: Database, participant_id: str, now: int) -> list[Appointment]:
    """Return the participant's booked appointments that have not ended (or been closed)."""
    rows = db.execute(
        _APPOINTMENT_QUERY + " WHERE appointments.participant_id = ?"
        " AND appointments.cancelled = 0 AND appointments.chat_closed = 0"
        " AND appointments.ends_at > ?"
        " ORDER BY appointments.starts_at",
        [participant_id, now],
    ).fetchall()
    return [_appointment(row) for row in rows]


def participant_appointments(db: Database, participant_id: str) -> list[Appointment]:
    """Return every appointment the participant still has: past ones until they are purged."""
    rows = db.execute(
        _APPOINTMENT_QUERY + " WHERE appointments.participant_id = ?"
        " ORDER BY appointments.starts_at",
        [participant_id],
    ).fetchall()
    return [_appointment(row) for row in rows]


def get_participant_appointment(
    db: Database, participant_id: str, appointment_id: str
) -> Appointment:
    """Return one of the participant's appointments.

    :raises NotFoundError: when it is not theirs.
    """
    row = db.execute(
        _APPOINTMENT_QUERY + " WHERE appointments.id = ? AND appointments.participant_id = ?",
        [appointment_id, participant_id],
    ).fetchone()
    if row is None:
        raise NotFoundError
    return _appointment(row)


def therapist_appointments(db: Database, therapist_id: str, since: int) -> list[Appointment]:
    """Return the therapist's appointments that end after ``since``, cancelled ones included."""
    rows = db.execute(
        _APPOINTMENT_QUERY + " WHERE appointments.therapist_id = ? AND appointments.ends_at > ?"
        " ORDER BY appointments.starts_at",
        [therapist_id, since],
    ).fetchall()
    return [_appointment(row) for row in rows]


def booking_opens_at(created_day: str | None, min_hours: int) -> int:
    """Return when an account made on ``created_day`` may book (a UTC timestamp).

    Only the day an account was made is stored, so its age is known to within a day.
    Counting ``min_hours`` from the end of that day (midnight UTC) is the one rule that
    never lets a younger account book; it waits at most 24 hours longer. An account made
    before days were kept (``None``), or ``min_hours`` 0, may book at once.
    """
    if created_day is None or min_hours == 0:
        return 0
    next_day = datetime.date.fromisoformat(created_day) + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(next_day, datetime.time(0), datetime.UTC)
    return int(midnight.timestamp()) + min_hours * 3600


def is_blocked(db: Database, participant_id: str) -> bool:
    """Return whether a therapist has stopped this account from booking."""
    row = db.execute("SELECT blocked FROM participants WHERE id = ?", [participant_id]).fetchone()
    return bool(row and row[0])


def block_participant(
    db: Database, therapist_id: str, appointment_id: str, withhold_from: str | None = None
) -> None:
    """Stop the participant of the therapist's appointment from booking any further time.

    :param withhold_from: today (UTC), when the therapist also withholds their free times
        from accounts made from this day on (a blocked person may make a new account).
        An earlier such day is kept.
    :raises NotFoundError: when the appointment is not the therapist's.
    """
    with transaction(db):
        changed = db.execute(
            "UPDATE participants SET blocked = 1 WHERE id ="
            " (SELECT participant_id FROM appointments WHERE id = ? AND therapist_id = ?)",
            [appointment_id, therapist_id],
        )
        if changed.rowcount != 1:
            raise NotFoundError
        if withhold_from is not None:
            db.execute(
                "UPDATE therapists SET withhold_from_day = coalesce(withhold_from_day, ?)"
                " WHERE id = ?",
                [withhold_from, therapist_id],
            )


def withholding_since(db: Database, therapist_id: str) -> str | None:
    """Return the day from which the therapist withholds their times from new accounts."""
    row = db.execute(
        "SELECT withhold_from_day FROM therapists WHERE id = ?", [therapist_id]
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def stop_withholding(db: Database, therapist_id: str) -> None:
    """Show the therapist's free times to every account again."""
    with transaction(db):
        db.execute("UPDATE therapists SET withhold_from_day = NULL WHERE id = ?", [therapist_id])


def unblock_participant(db: Database, therapist_id: str, pseudonym: str) -> bool:
    """Let the participant known to this therapist as ``pseudonym`` book again.

    :returns: whether such a participant was found.
    """
    with transaction(db):
        changed = db.execute(
            "UPDATE participants SET blocked = 0 WHERE id ="
            " (SELECT participant_id FROM pairs WHERE therapist_id = ? AND pseudonym = ?)",
            [therapist_id, pseudonym.strip().upper()],
        )
    return changed.rowcount == 1


def seal_time_zone(zone_name: str, public_key: bytes) -> bytes:
    """Seal a participant's time zone band to their own key: a copy of the disk does not
    tell which part of Europe they chose."""
    return seal(zone_name.encode(), public_key)


def set_time_zone(db: Database, participant_id: str, zone_name: str) -> None:
    """Keep the participant's chosen time zone band with the account, sealed to them."""
    with transaction(db):
        db.execute(
            "UPDATE participants SET time_zone = ? WHERE id = ?",
            [seal_time_zone(zone_name, _public_key(db, participant_id)), participant_id],
        )


def _public_key(db: Database, participant_id: str) -> bytes:
    (public_key,) = db.execute(
        "SELECT public_key FROM participants WHERE id = ?", [participant_id]
    ).fetchone()
    return bytes(public_key)


def time_zone_of(db: Database, participant_id: str, secret_key: bytes) -> str:
    """Return the participant's time zone band (only their own secret key opens it)."""
    row = db.execute("SELECT time_zone FROM participants WHERE id = ?", [participant_id]).fetchone()
    try:
        return open_sealed(row[0], secret_key).decode() if row else "UTC"
    except (UnsealError, UnicodeDecodeError):
        return "UTC"


def purge_bookings(db: Database, now: int, retention_seconds: int) -> int:
    """Delete slots that have ended and appointments past their retention.

    :returns: how many rows went.
    """
    with transaction(db):
        removed = db.execute(
            "DELETE FROM appointments WHERE ends_at <= ?", [now - retention_seconds]
        ).rowcount
        removed += db.execute("DELETE FROM slots WHERE ends_at <= ?", [now]).rowcount
    return int(removed)
