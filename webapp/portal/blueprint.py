"""The portal blueprint: its gate, and the logged-in therapist."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from stillroom.crypto.kdf import KeyDeriver
from stillroom.webapp.gate import LANGUAGE_PREFIX, Gate, current_session, db
from stillroom.webapp.sessions import THERAPIST_SESSIONS
from stillroom.webapp.therapists import Therapist, get_therapist

bp = Blueprint("portal", __name__, url_prefix=LANGUAGE_PREFIX)
gate = Gate(bp, cookie="stillroom_portal", table=THERAPIST_SESSIONS, home="portal.home")
login_required = gate.login_required

#: How long a shown TOTP secret stays usable for finishing enrolment, in minutes.
ENROL_FORM_MINUTES = 60


def current_therapist() -> Therapist:
    """Return the logged-in therapist (only inside ``login_required`` views)."""
    session = current_session()
    assert session is not None
    return get_therapist(db(), session.owner_id)


def deriver() -> KeyDeriver:
    """Return the app's argon2id key deriver."""
    value: KeyDeriver = current_app.config["KEY_DERIVER"]
    return value


def totp_key() -> bytes:
    """Return the server key that encrypts TOTP secrets at rest."""
    key: bytes = current_app.config["TOTP_KEY"]
    return key


def form_text(field: str, limit: int) -> str:
    """Return a form field, or ``""`` when it is longer than ``limit`` characters."""
    value = request.form.get(field, "")
    return value if len(value) <= limit else ""
