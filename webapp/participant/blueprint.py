"""The participant blueprint: its gate, and how passphrases are read from forms."""

from __future__ import annotations

from flask import Blueprint, request

from stillroom.crypto.passphrase import MAX_INPUT_CHARS, PassphraseInputError, normalise_passphrase
from stillroom.webapp.gate import LANGUAGE_PREFIX, Gate, open_form_value, seal_form_value
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


def read_passphrase(field: str) -> str:
    """Return the normalised passphrase typed into ``field``.

    :raises PassphraseInputError: when it is empty, too long, or holds anything but
        words (control characters, digits, or undecodable bytes, which arrive as
        U+FFFD or as undecoded ``%XX``).
    """
    raw = request.form.get(field, "")
    if len(raw) > MAX_INPUT_CHARS or "\ufffd" in raw:
        raise PassphraseInputError("unreadable passphrase")
    passphrase = normalise_passphrase(raw)
    if not passphrase or not all(char.isalpha() or char in " -" for char in passphrase):
        raise PassphraseInputError("not a passphrase of words")
    return passphrase


def seal_pending(passphrase: str) -> str:
    """Carry a shown passphrase to the confirmation step, encrypted, never stored."""
    return seal_form_value(passphrase)


def open_pending(value: str) -> str | None:
    """Return the passphrase sealed by :func:`seal_pending`, or ``None`` if unusable."""
    return open_form_value(value, PENDING_MINUTES)
