"""Server-side sessions.

The browser holds a random 256-bit token and nothing else. The database holds the
token's hash and the participant's secret key wrapped under a key derived from the
token, so a copy of the database opens no account and a logout or a restart of
the session table ends access for good.
"""

from __future__ import annotations

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
from stillroom.webapp.accounts import Unlocked
from stillroom.webapp.store import transaction

#: Do not rewrite a session row on every request; once a minute is precise enough.
_TOUCH_GRANULARITY = 60


@dataclass(frozen=True)
class Timeouts:
    """How long a session may idle, and how long it may live at all, in seconds."""

    idle: int
    absolute: int


@dataclass(frozen=True)
class Session:
    """A live session, with the account's key open for this request."""

    token_hash: bytes
    account: Unlocked


def start_session(db: Database, account: Unlocked, now: int, timeouts: Timeouts) -> str:
    """Create a session for ``account`` and return its token (for the cookie only)."""
    token = new_token()
    with transaction(db):
        db.table("sessions").insert(
            {
                "token_hash": token_hash(token),
                "participant_id": account.participant_id,
                "wrapped_secret_key": wrap_key(account.secret_key, token_key(token)),
                "idle_expires_at": now + timeouts.idle,
                "absolute_expires_at": now + timeouts.absolute,
            }
        )
    return token


def load_session(db: Database, token: str, now: int, timeouts: Timeouts) -> Session | None:
    """Return the live session of ``token``, or ``None`` when it is unknown or over.

    An expired session is deleted on sight; a live one has its idle deadline moved on.
    """
    hashed = token_hash(token)
    row = db.execute(
        "SELECT participant_id, wrapped_secret_key, idle_expires_at, absolute_expires_at"
        " FROM sessions WHERE token_hash = ?",
        [hashed],
    ).fetchone()
    if row is None:
        return None
    participant_id, wrapped, idle_expires_at, absolute_expires_at = row
    if now >= idle_expires_at or now >= absolute_expires_at:
        end_session(db, hashed)
        return None
    try:
        secret_key = unwrap_key(wrapped, token_key(token))
    except UnwrapError:
        end_session(db, hashed)
        return None
    new_idle = min(now + timeouts.idle, absolute_expires_at)
    if new_idle - idle_expires_at >= _TOUCH_GRANULARITY:
        with transaction(db):
            db.execute(
                "UPDATE sessions SET idle_expires_at = ? WHERE token_hash = ?", [new_idle, hashed]
            )
    return Session(hashed, Unlocked(participant_id, secret_key))


def end_session(db: Database, hashed: bytes) -> None:
    """Delete one session by its token hash."""
    with transaction(db):
        db.execute("DELETE FROM sessions WHERE token_hash = ?", [hashed])


def end_expired_sessions(db: Database, now: int) -> int:
    """Delete every session past a deadline; return how many went."""
    with transaction(db):
        cursor = db.execute(
            "DELETE FROM sessions WHERE idle_expires_at <= ? OR absolute_expires_at <= ?",
            [now, now],
        )
    return cursor.rowcount
