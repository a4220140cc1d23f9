"""Server-side sessions, for participants and therapists alike.

The browser holds a random 256-bit token and nothing else. The database holds the
token's hash and the user's secret key wrapped under a key derived from the
token, so a copy of the database opens no account and a logout or a restart of
the session table ends access for good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.crypto.keys import (
    UnwrapError,
    new_token,
    token_hash,
    token_key,
    unwrap_key,
    wrap_key,
)
from stillroom.webapp.store import StoreUnwritableError, transaction

#: Do not rewrite a session row on every request: at most every 5 minutes, or a sixth of
#: the idle timeout when that is shorter. A session may so end up to that much before its
#: idle time, never after. An open chat reloads its feed about once a minute; a write
#: (with its sync to disk) on each of those would cost more than the reload itself.
_MOST_TOUCH_SECONDS = 300


@dataclass(frozen=True)
class SessionTable:
    """Where one kind of user's sessions live: the table and its owner column."""

    name: str
    owner: str


PARTICIPANT_SESSIONS = SessionTable("sessions", "participant_id")
THERAPIST_SESSIONS = SessionTable("therapist_sessions", "therapist_id")


@dataclass(frozen=True)
class Timeouts:
    """How long a session may idle, and how long it may live at all, in seconds."""

    idle: int
    absolute: int


@dataclass(frozen=True)
class Session:
    """A live session, with its owner's secret key open for this request."""

    token_hash: bytes
    owner_id: str
    secret_key: bytes


def start_session(
    db: Database,
    table: SessionTable,
    owner_id: str,
    secret_key: bytes,
    now: int,
    timeouts: Timeouts,
) -> str:
    """Create a session for ``owner_id`` and return its token (for the cookie only)."""
    token = new_token()
    with transaction(db):
        db.table(table.name).insert(
            {
                "token_hash": token_hash(token),
                table.owner: owner_id,
                "wrapped_secret_key": wrap_key(secret_key, token_key(token)),
                "idle_expires_at": now + timeouts.idle,
                "absolute_expires_at": now + timeouts.absolute,
            }
        )
    return token


def load_session(
    db: Database, table: SessionTable, token: str, now: int, timeouts: Timeouts
) -> Session | None:
    """Return the live session of ``token``, or ``None`` when it is unknown or over.

    An expired session is deleted on sight; a live one has its idle deadline moved on.
    """
    hashed = token_hash(token)
    row = db.execute(
        f"SELECT {table.owner}, wrapped_secret_key, idle_expires_at, absolute_expires_at"  # noqa: S608 - names are constants
        f" FROM {table.name} WHERE token_hash = ?",
        [hashed],
    ).fetchone()
    if row is None:
        return None
    owner_id, wrapped, idle_expires_at, absolute_expires_at = row
    if now >= idle_expires_at or now >= absolute_expires_at:
        _if_possible(lambda: end_session(db, table, hashed))
        return None
    try:
        secret_key = unwrap_key(wrapped, token_key(token))
    except UnwrapError:
        _if_possible(lambda: end_session(db, table, hashed))
        return None
    new_idle = min(now + timeouts.idle, absolute_expires_at)
    if new_idle - idle_expires_at >= min(_MOST_TOUCH_SECONDS, timeouts.idle // 6):
        _if_possible(lambda: _move_idle_deadline(db, table, hashed, new_idle))
    return Session(hashed, owner_id, secret_key)


def session_is_live(db: Database, table: SessionTable, hashed: bytes, now: int) -> bool:
    """Return whether a session loaded earlier still stands; read only, deadlines unmoved.

    A logout elsewhere, a timeout or a deletion since then makes it ``False``.
    """
    row = db.execute(
        f"SELECT 1 FROM {table.name} WHERE token_hash = ?"  # noqa: S608 - names are constants
        " AND idle_expires_at > ? AND absolute_expires_at > ?",
        [hashed, now, now],
    ).fetchone()
    return row is not None


def _move_idle_deadline(db: Database, table: SessionTable, hashed: bytes, deadline: int) -> None:
    with transaction(db):
        db.execute(
            f"UPDATE {table.name} SET idle_expires_at = ? WHERE token_hash = ?",  # noqa: S608
            [deadline, hashed],
        )


def _if_possible(write: Callable[[], None]) -> None:
    """Run a write that reading does not depend on; on a full or read-only disk, go on.

    A session read on a full disk keeps working: its idle deadline moves at the next
    request that can write, and an expired row is refused here and purged later.
    """
    try:
        write()
    except StoreUnwritableError as problem:
        problem.report()


def end_session(db: Database, table: SessionTable, hashed: bytes) -> None:
    """Delete one session by its token hash."""
    with transaction(db):
        db.execute(f"DELETE FROM {table.name} WHERE token_hash = ?", [hashed])  # noqa: S608


def end_sessions_of(db: Database, table: SessionTable, owner_id: str) -> None:
    """Delete every session of one user (inside the caller's transaction)."""
    db.execute(f"DELETE FROM {table.name} WHERE {table.owner} = ?", [owner_id])  # noqa: S608


def end_expired_sessions(db: Database, now: int) -> int:
    """Delete every session of either kind past a deadline; return how many went."""
    removed = 0
    with transaction(db):
        for table in (PARTICIPANT_SESSIONS, THERAPIST_SESSIONS):
            cursor = db.execute(
                f"DELETE FROM {table.name}"  # noqa: S608 - names are constants
                " WHERE idle_expires_at <= ? OR absolute_expires_at <= ?",
                [now, now],
            )
            removed += cursor.rowcount
    return removed
