"""The participant blueprint: its gate, and how a shown passphrase reaches its form."""

from __future__ import annotations

from flask import Blueprint

from stillroom.webapp.booking import time_zone_of
from stillroom.webapp.gate import (
    LANGUAGE_PREFIX,
    Gate,
    current_session,
    db,
    open_form_value,
    seal_form_value,
)
from stillroom.webapp.sessions import PARTICIPANT_SESSIONS

bp = Blueprint("participant", __name__, url_prefix=LANGUAGE_PREFIX)
gate = Gate(
    bp,
    cookie="stillroom",
    table=PARTICIPANT_SESSIONS,
    home="participant.account",
    public_forms=("participant.login", "participant.create"),
)
login_required = gate.login_required

#: How long a shown, not yet confirmed passphrase stays valid, in minutes.
PENDING_MINUTES = 60


def seal_pending(passphrase: str) -> str:
    """Carry a shown passphrase to the confirmation step, encrypted, never stored."""
    return seal_form_value(passphrase)


def open_pending(value: str) -> str | None:
    """Return the passphrase sealed by :func:`seal_pending`, or ``None`` if unusable."""
    return open_form_value(value, PENDING_MINUTES)


def zone() -> str:
    """Return the logged-in participant's time zone band."""
    session = current_session()
    assert session is not None
    return time_zone_of(db(), session.owner_id, session.secret_key)
