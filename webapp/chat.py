"""The appointment chat: windows, conversations, messages, limits and deletion.

A conversation belongs to one participant-therapist pair and has its own key,
sealed to both public keys (DESIGN §4) and locked under the conversation's key slot.
The server opens it only with the secret key of a logged-in side, so a copy of the
data directory reads nothing. Messages are encrypted under a key made from it and
the key of the day they expire (:func:`stillroom.crypto.box.message_key`).

Deleting a conversation deletes its rows and then destroys its slot; the purge
destroys each day's message key on that day. A stale copy of a ciphertext, wherever
the disk kept it, then has no key anywhere (crypto-shredding). A backup taken before
holds both.
"""

from __future__ import annotations

import datetime
import secrets
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from stillroom.crypto.box import (
    LEGACY_ENVELOPE_VERSION,
    MessageUnavailableError,
    OpenedMessage,
    UnsealError,
    envelope_version,
    message_key,
    new_conversation_key,
    open_message,
    open_sealed,
    seal,
    seal_message,
)
from stillroom.crypto.keys import UnwrapError
from stillroom.webapp.booking import NotFoundError
from stillroom.webapp.hub import HUB
from stillroom.webapp.keyslots import (
    SlotGoneError,
    day_slot,
    deletion_day,
    destroy_slots,
    doomed,
    lock,
    new_slot,
    slot_key,
    unlock,
)
from stillroom.webapp.store import checkpoint, transaction

MAX_MESSAGE_CHARS = 2000
EXTENSION_MINUTES = 15
#: A chat can be extended at most this long in all.
MAX_EXTENSION_MINUTES = 120
#: Characters kept besides printable text: line breaks and tabs.
_KEPT_CONTROLS = {"\n", "\t"}
#: Bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069) have a scope, and an
#: unmatched one can reach past the message's own isolation into the rest of its line (its
#: time). Right-to-left text needs none of them; the marks without scope (U+200E, U+200F,
#: U+061C) stay.
_SCOPED_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Characters that show nothing: Unicode's default-ignorable code points (zero-width
#: spaces and joiners, fillers, variation selectors, tags) and the blank braille
#: pattern. A message made of these and white space alone is refused as empty.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


class ChatError(Exception):
    """Base class of the chat errors; each has its own calm message."""


class ChatClosedError(ChatError):
    """The chat window is not open: nothing can be written now."""


class MessageInputError(ChatError):
    """The message is empty or too long.

    :param reason: ``"empty"`` or ``"long"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimitedError(ChatError):
    """This session sent too many messages in a short time."""


class ConversationLockedError(ChatError):
    """This side's copy of the conversation key cannot be opened (a reset therapist)."""


@dataclass(frozen=True)
class ChatAppointment:
    """An appointment seen from its chat."""

    id: str
    participant_id: str
    therapist_id: str
    starts_at: int
    ends_at: int
    extra_minutes: int
    closed: bool
    cancelled: bool

    def opens_at(self, opens_minutes_before: int) -> int:
        """When writing becomes possible."""
        return self.starts_at - opens_minutes_before * 60

    def closes_at(self) -> int:
        """When writing stops, extensions included."""
        return self.ends_at + self.extra_minutes * 60

    def is_over(self, now: int) -> bool:
        """Whether nobody can write any more: closed, cancelled, or past its end."""
        return self.closed or self.cancelled or now >= self.closes_at()

    def is_open(self, now: int, opens_minutes_before: int) -> bool:
        """Whether both sides can write now."""
        return (
            not self.closed
            and not self.cancelled
            and self.opens_at(opens_minutes_before) <= now < self.closes_at()
        )


@dataclass(frozen=True)
class ShownMessage:
    """A message as a page shows it; ``opened`` is ``None`` when it cannot be read."""

    seq: int
    opened: OpenedMessage | None


_APPOINTMENT = (
    "SELECT id, participant_id, therapist_id, starts_at, ends_at, chat_extra_minutes,"
    " chat_closed, cancelled FROM appointments"
)


def _appointment(row: Any) -> ChatAppointment:
    appointment_id, participant_id, therapist_id, starts, ends, extra, closed, cancelled = row
    return ChatAppointment(
        appointment_id,
        participant_id,
        therapist_id,
        starts,
        ends,
        extra,
        bool(closed),
        bool(cancelled),
    )


def appointment_for(db: Database, role: str, owner_id: str, appointment_id: str) -> ChatAppointment:
    """Return the appointment ``appointment_id`` if it belongs to this participant or therapist.

    :param role: ``"participant"`` or ``"therapist"``.
    :raises NotFoundError: when it does not exist or is someone else's.
    """
    column = {"participant": "participant_id", "therapist": "therapist_id"}[role]
    row = db.execute(
        f"{_APPOINTMENT} WHERE id = ? AND {column} = ?",
        [appointment_id, owner_id],
    ).fetchone()
    if row is None:
        raise NotFoundError
    return _appointment(row)


def conversation_id_of(db: Database, participant_id: str, therapist_id: str) -> str | None:
    """Return the pair's conversation, if one exists."""
    row = db.execute(
        "SELECT id FROM conversations WHERE participant_id = ? AND therapist_id = ?",
        [participant_id, therapist_id],
    ).fetchone()
    return None if row is None else str(row[0])


def start_conversation(db: Database, participant_id: str, therapist_id: str) -> str:
    """Return the pair's conversation, creating it with a fresh key sealed to both sides.

    :raises ConversationLockedError: when a side has no key pair (a therapist who was
        reset and has not enrolled again).
    """
    existing = conversation_id_of(db, participant_id, therapist_id)
    if existing is not None:
        (copies,) = db.execute(
            "SELECT key_for_participant IS NOT NULL AND key_for_therapist IS NOT NULL"
            " FROM conversations WHERE id = ?",
            [existing],
        ).fetchone()
        if copies:
            return existing
        delete_conversation(db, existing)  # a side's copy was shredded: it is over
    participant_key, therapist_key = db.execute(
        "SELECT (SELECT public_key FROM participants WHERE id = ?),"
        " (SELECT public_key FROM therapists WHERE id = ?)",
        [participant_id, therapist_id],
    ).fetchone()
    if participant_key is None or therapist_key is None:  # a therapist reset, not enrolled again
        raise ConversationLockedError
    key = new_conversation_key()
    conversation_id = secrets.token_hex(16)
    with transaction(db):
        if conversation_id_of(db, participant_id, therapist_id) is None:
            slot = new_slot(db)
            db.table("conversations").insert(
                {
                    "id": conversation_id,
                    "participant_id": participant_id,
                    "therapist_id": therapist_id,
                    "slot": slot,
                    "key_for_participant": lock(db, slot, seal(key, participant_key)),
                    "key_for_therapist": lock(db, slot, seal(key, therapist_key)),
                }
            )
    return conversation_id_of(db, participant_id, therapist_id) or conversation_id


def conversation_key(db: Database, conversation_id: str, role: str, secret_key: bytes) -> bytes:
    """Open this side's copy of the conversation key: the slot's lock, then the seal.

    :raises ConversationLockedError: when it is gone or sealed to another key.
    """
    column = {"participant": "key_for_participant", "therapist": "key_for_therapist"}[role]
    row = db.execute(
        f"SELECT slot, {column} FROM conversations WHERE id = ?",  # noqa: S608 - constants only
        [conversation_id],
    ).fetchone()
    if row is None or row[0] is None or row[1] is None:
        raise ConversationLockedError
    try:
        return open_sealed(unlock(db, row[0], row[1]), secret_key)
    except (SlotGoneError, UnwrapError, UnsealError):
        raise ConversationLockedError from None


def clean_text(raw: str) -> str:
    """Return a message as it is stored: NFC, plain lines, no control characters.

    Right-to-left text stays, and the page isolates each message; direction controls
    with a scope go, so that nothing in a message can turn the text around it.

    :raises MessageInputError: when nothing visible is left (only white space and
        zero-width or other invisible characters), or it is longer than allowed.
    """
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(char for char in text if char in _KEPT_CONTROLS or not _dropped(char))
    text = "\n".join(line.rstrip() for line in text.strip().split("\n"))
    if all(_invisible(char) for char in text):
        raise MessageInputError("empty")
    if len(text) > MAX_MESSAGE_CHARS:
        raise MessageInputError("long")
    return text


def _invisible(char: str) -> bool:
    """Whether a character shows nothing on its own (white space included)."""
    point = ord(char)
    return char.isspace() or any(low <= point <= high for low, high in _INVISIBLE_RANGES)


def _dropped(char: str) -> bool:
    """Control characters, lone surrogates and scoped bidi controls go; joiners and marks stay."""
    return char in _SCOPED_BIDI or unicodedata.category(char) in ("Cc", "Cs")


def expiry_day(appointment: ChatAppointment, retention_days: int) -> str:
    """Return the UTC day on which messages of this appointment are deleted."""
    return deletion_day(appointment.closes_at(), retention_days)


#: The bit of ``appointments.sides_wrote`` each side sets by writing.
SIDE_BITS = {"participant": 1, "therapist": 2}
BOTH_SIDES = 3


def send_message(
    db: Database,
    appointment: ChatAppointment,
    role: str,
    secret_key: bytes,
    text: str,
    now: int,
    opens_minutes_before: int,
    retention_days: int,
) -> int:
    """Store one message from ``role`` in the pair's conversation; return its number.

    :raises ChatClosedError: outside the chat window.
    :raises ConversationLockedError: when this side cannot open the key.
    """
    if not appointment.is_open(now, opens_minutes_before):
        raise ChatClosedError
    conversation_id = start_conversation(db, appointment.participant_id, appointment.therapist_id)
    key = conversation_key(db, conversation_id, role, secret_key)
    with transaction(db):
        if conversation_id_of(db, appointment.participant_id, appointment.therapist_id) is None:
            raise ConversationLockedError  # deleted a moment ago, with its key
        (last,) = db.execute(
            "SELECT coalesce(max(seq), 0) FROM messages WHERE conversation_id = ?",
            [conversation_id],
        ).fetchone()
        seq = int(last) + 1
        day = expiry_day(appointment, retention_days)
        sealing_key = message_key(key, slot_key(db, day_slot(db, day)))
        db.table("messages").insert(
            {
                "conversation_id": conversation_id,
                "seq": seq,
                "envelope": seal_message(sealing_key, conversation_id, seq, role, now // 60, text),
                "expires_day": day,
            }
        )
        # Which sides wrote, and nothing more: a course counts a session both sides came to.
        db.execute(
            "UPDATE appointments SET sides_wrote = sides_wrote | ? WHERE id = ?",
            [SIDE_BITS[role], appointment.id],
        )
    return seq


def read_messages(
    db: Database, conversation_id: str, key: bytes, after: int = 0, newest: int | None = None
) -> list[ShownMessage]:
    """Return the conversation's messages in order; unreadable ones as ``opened=None``.

    :param after: only messages after this number.
    :param newest: only the last ``newest`` of them.
    """
    rows = db.execute(
        "SELECT seq, envelope, day_keys.slot FROM messages"
        " LEFT JOIN day_keys USING (expires_day)"
        " WHERE conversation_id = ? AND seq > ? ORDER BY seq DESC LIMIT ?",
        [conversation_id, after, -1 if newest is None else newest],
    ).fetchall()
    opened_days: dict[int, bytes | None] = {}
    shown = []
    for seq, envelope, slot in reversed(rows):
        try:
            opening_key = _opening_key(db, key, envelope, slot, opened_days)
            opened: OpenedMessage | None = open_message(opening_key, conversation_id, seq, envelope)
        except MessageUnavailableError:
            opened = None
        shown.append(ShownMessage(seq, opened))
    return shown


def _opening_key(
    db: Database,
    conversation_key: bytes,
    envelope: bytes,
    slot: int | None,
    opened_days: dict[int, bytes | None],
) -> bytes:
    """Return the key that opens ``envelope``, remembering day keys for the next message.

    :raises MessageUnavailableError: when the day's key is gone.
    """
    if envelope_version(envelope) == LEGACY_ENVELOPE_VERSION:
        return conversation_key
    if slot is not None and slot not in opened_days:
        try:
            opened_days[slot] = slot_key(db, slot)
        except SlotGoneError:
            opened_days[slot] = None
    day_key = None if slot is None else opened_days[slot]
    if day_key is None:
        raise MessageUnavailableError("the day's key is gone")
    return message_key(conversation_key, day_key)


def conversation_slots(db: Database, column: str, value: str) -> list[int]:
    """Return the slots of the conversations to delete with their rows.

    :param column: ``"id"`` for one conversation, ``"participant_id"`` or
        ``"therapist_id"`` for all of one side's.
    """
    if column not in ("id", "participant_id", "therapist_id"):
        raise ValueError(column)
    rows = db.execute(
        f"SELECT slot FROM conversations WHERE {column} = ? AND slot IS NOT NULL",  # noqa: S608
        [value],
    )
    return [int(row[0]) for row in rows]


def delete_conversation(db: Database, conversation_id: str) -> None:
    """Delete the conversation and its messages, then destroy its slot, then flush the log.

    Open feeds of the pair hear of it at once, so that none keeps showing what went.
    """
    owner = db.execute(
        "SELECT participant_id FROM conversations WHERE id = ?", [conversation_id]
    ).fetchone()
    with transaction(db):
        gone = doomed(db, conversation_slots(db, "id", conversation_id))
        db.execute("DELETE FROM messages WHERE conversation_id = ?", [conversation_id])
        db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])
    destroy_slots(db, gone)
    checkpoint(db)
    if owner is not None:
        HUB.publish_participant(owner[0])


def set_delete_when_chat_ends(db: Database, conversation_id: str, wanted: bool) -> None:
    """Keep the participant's choice to have the conversation deleted when the chat ends."""
    with transaction(db):
        db.execute(
            "UPDATE conversations SET delete_when_chat_ends = ? WHERE id = ?",
            [int(wanted), conversation_id],
        )


def extend_chat(db: Database, appointment: ChatAppointment, now: int) -> bool:
    """Give the chat another :data:`EXTENSION_MINUTES`; return whether it was possible."""
    if appointment.closed or appointment.cancelled or now >= appointment.closes_at():
        return False
    with transaction(db):
        changed = db.execute(
            "UPDATE appointments SET chat_extra_minutes = chat_extra_minutes + ?"
            " WHERE id = ? AND chat_extra_minutes + ? <= ?",
            [EXTENSION_MINUTES, appointment.id, EXTENSION_MINUTES, MAX_EXTENSION_MINUTES],
        )
    return changed.rowcount == 1


def close_chat(db: Database, appointment: ChatAppointment) -> None:
    """End the chat now; both sides can still read what was written."""
    with transaction(db):
        db.execute("UPDATE appointments SET chat_closed = 1 WHERE id = ?", [appointment.id])


#: Conversations to delete: flagged for deletion at the end of a chat that has ended, with
#: no chat of the pair open now; or empty, with no chat of the pair open or to come.
_FINISHED_CONVERSATIONS = """
    SELECT id FROM conversations c
    WHERE (
        c.delete_when_chat_ends = 1
        AND NOT EXISTS (
            SELECT 1 FROM appointments a
            WHERE a.participant_id = c.participant_id AND a.therapist_id = c.therapist_id
              AND a.cancelled = 0 AND a.chat_closed = 0
              AND a.starts_at - :early <= :now AND a.ends_at + a.chat_extra_minutes * 60 > :now)
        AND EXISTS (
            SELECT 1 FROM appointments a
            WHERE a.participant_id = c.participant_id AND a.therapist_id = c.therapist_id
              AND (a.chat_closed = 1 OR a.ends_at + a.chat_extra_minutes * 60 <= :now))
    ) OR (
        NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)
        AND NOT EXISTS (
            SELECT 1 FROM appointments a
            WHERE a.participant_id = c.participant_id AND a.therapist_id = c.therapist_id
              AND a.cancelled = 0 AND a.chat_closed = 0
              AND a.ends_at + a.chat_extra_minutes * 60 > :now)
    )
"""


#: Messages deleted per write transaction by the purge (about 25 ms each, measured here).
PURGE_BATCH = 5000


def purge_chats(db: Database, now: int, opens_minutes_before: int) -> int:
    """Destroy the keys of expired days, then delete their messages and unneeded conversations.

    A conversation goes, when its participant asked for deletion at the
    end of the chat and a chat of the pair has ended with none open now; or when it
    has no messages left and no chat of the pair is open or to come.

    :returns: how many messages and conversations went.
    """
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
    with transaction(db):  # the day keys first: what is past its day opens no more
        expired = db.execute("SELECT slot FROM day_keys WHERE expires_day <= ?", [today]).fetchall()
        db.execute("DELETE FROM day_keys WHERE expires_day <= ?", [today])
        gone = doomed(db, [row[0] for row in expired])
    destroy_slots(db, gone)
    removed = len(expired)
    while True:  # in batches, so that the server answers in between (one event loop)
        with transaction(db):
            batch = db.execute(
                "DELETE FROM messages WHERE rowid IN"
                " (SELECT rowid FROM messages WHERE expires_day <= ? LIMIT ?)",
                [today, PURGE_BATCH],
            ).rowcount
        removed += batch
        if batch < PURGE_BATCH:
            break
        time.sleep(0)  # under gevent, lets every waiting connection run
    done = db.execute(
        _FINISHED_CONVERSATIONS, {"now": now, "early": opens_minutes_before * 60}
    ).fetchall()
    for (conversation_id,) in done:
        delete_conversation(db, conversation_id)
    return int(removed) + len(done)


class RateLimiter:
    """At most ``count`` events per ``seconds`` for each key, kept in memory only.

    Nothing about senders is written anywhere; a restart forgets everything.
    """

    def __init__(
        self, count: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = count
        self.seconds = seconds
        self.clock = clock
        self.max_keys = 10_000
        self._events: dict[bytes, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: bytes) -> bool:
        """Record an event for ``key`` and return whether it is within the limit."""
        now = self.clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.seconds:
                events.popleft()
            if len(events) >= self.count:
                return False
            events.append(now)
            if len(self._events) > self.max_keys:  # forget keys quiet for a whole window
                for quiet in [k for k, v in self._events.items() if v[-1] <= now - self.seconds]:
                    del self._events[quiet]
            return True
