"""The course from the therapist's side: propose the next time, hand a participant over."""

from __future__ import annotations

import datetime
from typing import Any

from flask import abort, current_app, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.webapp.booking import NotFoundError, OverlapError, SlotInputError, therapist_slots
from stillroom.webapp.chat import ChatAppointment
from stillroom.webapp.gate import db, now
from stillroom.webapp.portal.appointments import own, pseudonym_of
from stillroom.webapp.portal.blueprint import bp, current_therapist, login_required
from stillroom.webapp.portal.schedule import DATE, SLOT_PROBLEMS, TIME, UNREADABLE_TIME, when
from stillroom.webapp.study import course
from stillroom.webapp.study.definition import Study
from stillroom.webapp.times import LocalTimeError, to_utc

#: Confirmations and refusals on the chat page, named by a code in its address.
COURSE_NOTICES = {
    "proposed": _l("Your proposal is on the participant's page, waiting for their confirmation."),
    "gone": _l("That time is no longer free. Please choose another one."),
    "unreadable": UNREADABLE_TIME,
    "overlap": _l("This overlaps a time you already have. Nothing was proposed."),
    "handed-over": _l("The participant's course is now with the therapist you chose."),
    **{f"slot-{reason}": text for reason, text in SLOT_PROBLEMS.items()},
}


def study() -> Study | None:
    """Return the study this deployment runs, or ``None`` in open mode."""
    running: Study | None = current_app.config["STUDY"]
    return running


def language_of(appointment: ChatAppointment) -> str:
    """Return the language the appointment was booked in: the course's language."""
    (language,) = (
        db().execute("SELECT language FROM appointments WHERE id = ?", [appointment.id]).fetchone()
    )
    return str(language)


def course_context(appointment: ChatAppointment) -> dict[str, Any]:
    """Return what the chat page shows of the course: free times to propose, handover."""
    therapist = current_therapist()
    language = language_of(appointment)
    free = [
        (slot.id, when(therapist, slot.starts_at, slot.ends_at))
        for slot in therapist_slots(db(), therapist.id, now())
        if slot.pseudonym is None and slot.starts_at > now() and language in slot.languages
    ]
    choices = course.handover_choices(db(), therapist.id, language, study())
    notice = COURSE_NOTICES.get(request.args.get("course", ""))
    return {"free_times": free, "can_hand_over": bool(choices), "course_notice": notice}


def session_minutes(appointment: ChatAppointment) -> int:
    """Return the length of a new proposed time: the study's sessions, or this one's."""
    running = study()
    if running is not None:
        return running.course.session_minutes
    return (appointment.ends_at - appointment.starts_at) // 60


def back(appointment: ChatAppointment, code: str) -> Response:
    """Return to the chat page with a course notice."""
    return redirect(
        url_for("portal.chat", appointment_id=appointment.id, course=code, _anchor="course")
    )


@bp.post("/chat/<appointment_id>/propose")
@login_required
def propose(appointment_id: str) -> Response:
    """Propose the participant's next time: one of the free times, or a new one for them."""
    appointment = own(appointment_id)
    therapist = current_therapist()
    form = request.form
    new_time = None
    if form.get("kind") == "new":
        if not (DATE.match(form.get("date", "")) and TIME.match(form.get("time", ""))):
            return back(appointment, "unreadable")
        try:
            starts = to_utc(
                datetime.date.fromisoformat(form["date"]),
                datetime.time.fromisoformat(form["time"]),
                therapist.time_zone,
            )
        except (ValueError, LocalTimeError, OverflowError):
            return back(appointment, "unreadable")
        new_time = (starts, session_minutes(appointment))
    try:
        course.propose(
            db(),
            therapist.id,
            appointment.participant_id,
            language_of(appointment),
            now(),
            slot_id=form.get("slot") or None,
            new_time=new_time,
        )
    except NotFoundError:
        return back(appointment, "gone")
    except SlotInputError as problem:
        return back(appointment, f"slot-{problem.reason}")
    except OverlapError:
        return back(appointment, "overlap")
    return back(appointment, "proposed")


@bp.route("/chat/<appointment_id>/handover", methods=["GET", "POST"])
@login_required
def handover(appointment_id: str) -> Any:
    """Hand the participant's course over to another therapist of the same site and language."""
    appointment = own(appointment_id)
    therapist = current_therapist()
    language = language_of(appointment)
    choices = course.handover_choices(db(), therapist.id, language, study())
    if request.method == "POST":
        try:
            course.hand_over(
                db(),
                appointment.participant_id,
                therapist.id,
                request.form.get("to", ""),
                language,
                now(),
                study(),
            )
        except course.HandoverError:
            abort(409)
        return back(appointment, "handed-over")
    return render_template(
        "portal/handover.html",
        appointment=appointment,
        pseudonym=pseudonym_of(appointment),
        choices=choices,
    )
