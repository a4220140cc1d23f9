"""The portal blueprint: its gate, and the logged-in therapist."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, g, redirect, request, url_for
from werkzeug.wrappers import Response

from stillroom.webapp.gate import LANGUAGE_PREFIX, Gate, current_session, db
from stillroom.webapp.sessions import THERAPIST_SESSIONS, end_session
from stillroom.webapp.therapists import RESEARCHER, Therapist, get_therapist

bp = Blueprint("portal", __name__, url_prefix=LANGUAGE_PREFIX)
gate = Gate(
    bp,
    cookie="stillroom_portal",
    table=THERAPIST_SESSIONS,
    home="portal.home",
    public_forms=("portal.login",),
)
login_required = gate.login_required

#: How long a shown TOTP secret stays usable for finishing enrolment, in minutes.
ENROL_FORM_MINUTES = 60


#: What a therapist who must replace a chosen password may open meanwhile.
RENEWAL_ENDPOINTS = ("portal.passphrase", "portal.logout", "portal.privacy")
#: The research pages: only researchers open them.
RESEARCH_ENDPOINTS = (
    "portal.research_flow",
    "portal.research_diagram",
    "portal.research_safety",
    "portal.research_completion",
)
#: All a researcher may open: the research pages, their own passphrase, the public pages.
RESEARCHER_ENDPOINTS = (
    *RESEARCH_ENDPOINTS,
    "portal.passphrase",
    "portal.logout",
    "portal.login",
    "portal.privacy",
)


@bp.before_request
def refuse_locked_out_therapists() -> Response | None:
    """End the session of a therapist whom the operator disabled or reset meanwhile.

    A therapist who logged in with a chosen password goes straight to the page that
    gives them a passphrase, and nowhere else, until they have taken it. A researcher
    opens only the research pages (and their passphrase); a therapist never opens those.
    """
    session = current_session()
    if session is None:
        return None
    therapist = get_therapist(db(), session.owner_id)
    if therapist.disabled or not therapist.enrolled:
        end_session(db(), THERAPIST_SESSIONS, session.token_hash)
        g.session = None
        g.stale_cookie = True
    elif therapist.renew and request.endpoint not in RENEWAL_ENDPOINTS:
        return redirect(url_for("portal.passphrase", done="renew"))
    elif therapist.role == RESEARCHER and request.endpoint not in RESEARCHER_ENDPOINTS:
        if request.endpoint == "portal.home":  # where every login lands
            return redirect(url_for("portal.research_flow", done=request.args.get("done")))
        abort(403)  # a therapist's page: appointments, chats, notes, availability
    elif therapist.role != RESEARCHER and request.endpoint in RESEARCH_ENDPOINTS:
        abort(403)
    return None


def current_therapist() -> Therapist:
    """Return the logged-in therapist (only inside ``login_required`` views)."""
    session = current_session()
    assert session is not None
    return get_therapist(db(), session.owner_id)


def totp_key() -> bytes:
    """Return the server key that encrypts TOTP secrets at rest."""
    key: bytes = current_app.config["TOTP_KEY"]
    return key
