"""Safety flags in the portal: on the participant's chat page, and the site lead's list.

A flag says which of the study's safety rules fired, at which timepoint and on which
day; never the answers. Seeing it is the therapist's to record: nothing else happens
by itself (no message, no e-mail, no change to booking).
"""

from __future__ import annotations

import datetime
from typing import Any

from babel.dates import format_date
from flask import abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from stillroom.webapp.chat import ChatAppointment
from stillroom.webapp.gate import current_session, db, now
from stillroom.webapp.i18n import current_language
from stillroom.webapp.portal.appointments import own
from stillroom.webapp.portal.blueprint import bp, current_therapist, login_required
from stillroom.webapp.study import safety
from stillroom.webapp.times import DATE_LOCALES


def today() -> datetime.date:
    """Return today's date (UTC): study data keeps days, never times."""
    return datetime.datetime.fromtimestamp(now(), datetime.UTC).date()


def written(day: datetime.date) -> str:
    """Return a flag's day written out in the portal's language."""
    return format_date(day, "long", locale=DATE_LOCALES[current_language()])


def safety_context(appointment: ChatAppointment) -> dict[str, Any]:
    """Return the open flags the chat page shows: only to the course's therapist."""
    flags = safety.therapist_flags(db(), appointment.therapist_id, appointment.participant_id)
    return {"safety_flags": [(flag, written(flag.day)) for flag in flags]}


@bp.post("/chat/<appointment_id>/safety/seen")
@login_required
def safety_seen(appointment_id: str) -> Response:
    """Record the day the therapist saw a flag; it then leaves the chat page."""
    appointment = own(appointment_id)
    flag = request.form.get("flag", "")
    if not flag.isdigit() or not safety.mark_seen(
        db(), appointment.therapist_id, appointment.participant_id, int(flag), today()
    ):
        abort(404)
    return redirect(url_for("portal.chat", appointment_id=appointment_id, _anchor="safety"))


@bp.get("/safety")
@login_required
def safety_list() -> str:
    """The site lead's list: flags of the site's participants who have no therapist yet."""
    therapist = current_therapist()
    if not therapist.lead or therapist.site is None:
        abort(404)
    flags = safety.lead_list(db(), therapist.site)
    return render_template(
        "portal/safety.html",
        site=therapist.site,
        flags=[(flag, written(flag.day)) for flag in flags],
    )


@bp.context_processor
def lead_menu() -> dict[str, bool]:
    """Tell the menu whether to link the safety list (a site's leads only)."""
    if current_session() is None:
        return {"site_lead": False}
    return {"site_lead": current_therapist().lead}
