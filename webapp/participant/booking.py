"""Booking for participants: free times in their language and zone; book, move, cancel."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from flask import abort, current_app, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.webapp.booking import (
    AccountTooNewError,
    Appointment,
    BookingBlockedError,
    BookingError,
    BookingLimitError,
    IntakeIncompleteError,
    NotFoundError,
    SessionsStoppedError,
    SlotTakenError,
    SlotUnavailableError,
    TooLateError,
    cancel_by_participant,
    dismiss_cancelled,
    free_slots,
    get_participant_appointment,
    open_cancel_note,
    participant_appointments,
    set_time_zone,
    upcoming_appointments,
)
from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.i18n import current_language
from stillroom.webapp.participant.blueprint import bp, login_required, zone
from stillroom.webapp.participant.study import assessment_due
from stillroom.webapp.study import course
from stillroom.webapp.study.course import may_book
from stillroom.webapp.study.definition import Study
from stillroom.webapp.times import (
    PARTICIPANT_ZONES,
    format_clock,
    format_day,
    format_when,
    local,
    to_utc,
)

TAKEN = _l("Someone booked this time just before you. Please choose another one.")
UNAVAILABLE = _l("This time is no longer available. Please choose another one.")
LIMIT = _l(
    "You already have an upcoming appointment. You can move or cancel it, and then book another."
)
TOO_LATE = _l(
    "Your appointment is less than %(hours)s hours away, so it can no longer be moved or"
    " cancelled here. If you cannot come, that is all right: you can book a new time afterwards."
)
CHOOSE = _l("Please choose a time first.")
NOT_AVAILABLE = _l(
    "Booking is not available for this account. If you need help now, the help page lists"
    " who you can call."
)
SESSIONS_STOPPED = _l(
    "You chose to stop the sessions, so no new time can be booked. If you need help now,"
    " the help page lists who you can call."
)
WAITING = _l(
    "Your waiting time ends on %(day)s. From that day you can book your first session here."
    " If you need help before then, the help page lists who you can call."
)
NO_COURSE = _l(
    "Booking chat sessions is not part of your place in the study. If you need help now,"
    " the help page lists who you can call."
)
PROPOSAL_GONE = _l(
    "The proposed time is no longer available. You can choose another time, or wait for"
    " your therapist to propose a new one."
)
TOO_NEW = _l(
    "New accounts can book a time from %(when)s. This short wait keeps the times free for"
    " the people who need them. If you need help now, the help page lists who you can call."
)


def study() -> Study | None:
    """Return the study this deployment runs, or ``None`` in open mode."""
    running: Study | None = current_app.config["STUDY"]
    return running


def participant_id() -> str:
    """Return the logged-in participant's id (only inside ``login_required`` views)."""
    session = current_session()
    assert session is not None
    return session.owner_id


def describe(appointment: Appointment) -> dict[str, Any]:
    """Return what the account page shows of an appointment, in the reader's zone."""
    session = current_session()
    assert session is not None
    note = open_cancel_note(
        db(), appointment, session.secret_key, settings().appointment_retention_days
    )
    return {
        "item": appointment,
        "when": format_when(appointment.starts_at, appointment.ends_at, zone(), current_language()),
        "note": note,
        "changeable": appointment.starts_at - now() >= settings().booking_cutoff_hours * 3600,
        "ended": appointment.ends_at <= now(),
    }


def my_appointments() -> list[dict[str, Any]]:
    """Return the participant's appointments, past ones included until purged, described."""
    return [describe(item) for item in participant_appointments(db(), participant_id())]


def own_appointment(appointment_id: str) -> Appointment:
    """Return one of the participant's appointments, or answer 404."""
    try:
        return get_participant_appointment(db(), participant_id(), appointment_id)
    except NotFoundError:
        abort(404)


def books_from(refusal: AccountTooNewError) -> str:
    """Return when a new account can book, as a day and time in the participant's zone."""
    band, language = zone(), current_language()
    day = format_day(refusal.opens_at, band, language)
    return str(TOO_NEW % {"when": f"{day}, {format_clock(refusal.opens_at, band, language)}"})


def waiting_text(refusal: course.WaitlistError) -> str:
    """Return when a waitlist ends, as a day in the participant's zone."""
    return str(WAITING % {"day": format_day(refusal.opens_at, zone(), current_language())})


def too_late_text() -> str:
    """Return the cutoff message with this deployment's hours."""
    return str(TOO_LATE % {"hours": settings().booking_cutoff_hours})


@dataclass(frozen=True)
class Week:
    """Seven days of free times, grouped by day, and whether later times exist."""

    number: int
    days: list[tuple[str, list[dict[str, Any]]]]
    later: bool


def free_week(number: int) -> Week:
    """Return week ``number`` (0 = from today) of free times in this language and zone.

    One week per page keeps the page small on a slow Tor circuit however busy the
    schedule is. A time within the cutoff is marked: once booked, it can be neither
    moved nor cancelled, and the participant should know that before choosing it.
    """
    language, band, s = current_language(), zone(), settings()
    today = local(now(), band).date()
    week_start = to_utc(today + datetime.timedelta(weeks=number), datetime.time(0), band)
    week_end = to_utc(today + datetime.timedelta(weeks=number + 1), datetime.time(0), band)
    horizon = now() + s.booking_weeks_ahead * 7 * 24 * 3600
    earliest = max(week_start, now() + s.booking_notice_minutes * 60)
    days: dict[str, list[dict[str, Any]]] = {}
    who = participant_id()
    therapists = course.bookable_therapists(db(), who, language, study())
    for slot in free_slots(db(), language, earliest, min(week_end, horizon), who, therapists):
        day = format_day(slot.starts_at, band, language)
        days.setdefault(day, []).append(
            {
                "id": slot.id,
                "start": format_clock(slot.starts_at, band, language),
                "end": format_clock(slot.ends_at, band, language),
                "therapist": slot.therapist_name,
                "final": slot.starts_at - now() < s.booking_cutoff_hours * 3600,
            }
        )
    later = bool(free_slots(db(), language, max(week_end, earliest), horizon, who, therapists))
    return Week(number, list(days.items()), later)


def week_asked() -> int:
    """Return the week in ``?week=``, kept within the weeks participants can book."""
    try:
        number = int(request.values.get("week", "0"))
    except ValueError:
        return 0
    return max(0, min(number, settings().booking_weeks_ahead))


@bp.route("/book", methods=["GET", "POST"])
@login_required
def booking() -> Any:
    """Free times in the participant's language and zone; book one, or move onto it."""
    moving = request.values.get("move") or None
    moved = None if moving is None else own_appointment(moving)
    if moved is not None and moved.cancelled:
        abort(404)
    error = None
    waiting = None
    status = 200
    course.cross_over_if_due(db(), participant_id(), now(), study())
    refusal = may_book(db(), participant_id(), now(), settings(), study())
    if request.method == "POST" and refusal is None:
        slot_id = request.form.get("slot", "")
        if not slot_id:
            error, status = CHOOSE, 400
        else:
            try:
                course.book_in_course(
                    db(),
                    participant_id(),
                    slot_id,
                    current_language(),
                    now(),
                    settings(),
                    study(),
                    replacing=moving,
                )
            except NotFoundError:
                abort(404)
            except BookingError as problem:
                error, status = refusal_text(problem)
            else:
                done = "moved" if moving else "booked"
                return redirect(url_for("participant.account", done=done))
    # Said neutrally, and no times are listed: a blocked account learns nothing more.
    if isinstance(refusal, BookingBlockedError):
        error, status = NOT_AVAILABLE, 403
    elif isinstance(refusal, IntakeIncompleteError):  # in a study: intake comes first
        return redirect(url_for("participant.account"))
    elif isinstance(refusal, SessionsStoppedError):
        error, status = SESSIONS_STOPPED, 403
    elif isinstance(refusal, AccountTooNewError | course.WaitlistError | course.NotInCourseError):
        # Not yet (or not in this arm): a notice, unless they tried.
        waiting = notice_of(refusal)
        status = 403 if request.method == "POST" else 200
    elif refusal is not None:
        abort(404)
    blocked = refusal is not None
    week = Week(0, [], later=False) if blocked else free_week(week_asked())
    return render_template(
        "participant/book.html",
        days=week.days,
        week=week.number,
        later=week.later,
        blocked=blocked,
        zones=PARTICIPANT_ZONES,
        zone=zone(),
        moving=moving,
        # Said on the page, so that nobody moves an appointment without seeing which one.
        moved=None if moved is None else describe(moved),
        weeks=settings().booking_weeks_ahead,
        cutoff_hours=settings().booking_cutoff_hours,
        notice=waiting,
        error=error,
    ), status


def refusal_text(problem: BookingError) -> tuple[str, int]:
    """Return the calm sentence and the status for a booking that was refused."""
    if isinstance(problem, SlotTakenError):
        return str(TAKEN), 409
    if isinstance(problem, BookingLimitError):
        return str(LIMIT), 409
    if isinstance(problem, TooLateError):
        return too_late_text(), 409
    if isinstance(problem, BookingBlockedError):
        return str(NOT_AVAILABLE), 403
    if isinstance(problem, course.ProposalGoneError):
        return str(PROPOSAL_GONE), 409
    if isinstance(problem, AccountTooNewError | course.WaitlistError | course.NotInCourseError):
        return notice_of(problem), 403
    return str(UNAVAILABLE), 409


def notice_of(refusal: BookingError) -> str:
    """Return the sentence that says why this account cannot book yet (or at all)."""
    if isinstance(refusal, course.WaitlistError):
        return waiting_text(refusal)
    if isinstance(refusal, AccountTooNewError):
        return books_from(refusal)
    return str(NO_COURSE)


def course_summary() -> dict[str, Any]:
    """Return what the account page shows of the course: where they are, what comes next.

    Viewing the page is also when a waitlist that has ended crosses over (if the
    maintenance pass has not done it already this minute) and ended chats are counted.
    """
    who = participant_id()
    course.cross_over_if_due(db(), who, now(), study())
    course.count_sessions(db(), now(), study())
    place = course.standing(db(), who, now(), settings(), study())
    proposal = place.proposal
    return {
        "place": place,
        "waiting": None
        if place.waitlist_ends is None
        else waiting_text(course.WaitlistError(place.waitlist_ends)),
        "proposal": None
        if proposal is None
        else format_when(proposal.starts_at, proposal.ends_at, zone(), current_language()),
        "proposed_by": None if proposal is None else proposal.therapist_name,
        "next": next_appointment(who),
        "error": refusal_text_for(request.args.get("course", "")),
        # In a study: the questionnaire due now (windows closed meanwhile are logged first).
        "due": assessment_due(record=True),
    }


def next_appointment(who: str) -> str | None:
    """Return when the participant's next appointment is, in their zone, if they have one."""
    upcoming = upcoming_appointments(db(), who, now())
    if not upcoming:
        return None
    first = upcoming[0]
    return format_when(first.starts_at, first.ends_at, zone(), current_language())


def refusal_text_for(code: str) -> str | None:
    """Return the sentence for a refused confirmation, named by its code in the address."""
    texts = {
        "gone": PROPOSAL_GONE,
        "limit": LIMIT,
        "unavailable": UNAVAILABLE,
        "refused": NOT_AVAILABLE,
    }
    found = texts.get(code)
    return None if found is None else str(found)


@bp.post("/course/confirm")
@login_required
def confirm_proposal() -> Response:
    """Book the time the therapist proposed, with one click and every rule of booking."""
    refusal = may_book(db(), participant_id(), now(), settings(), study())
    code = None
    try:
        if refusal is not None:
            raise refusal
        course.confirm_proposal(db(), participant_id(), now(), settings(), study())
    except course.ProposalGoneError:
        code = "gone"
    except BookingLimitError:
        code = "limit"
    except (SlotTakenError, SlotUnavailableError, TooLateError):
        code = "unavailable"
    except BookingError:
        code = "refused"
    if code is not None:
        return redirect(url_for("participant.account", course=code, _anchor="course"))
    return redirect(url_for("participant.account", done="booked"))


@bp.post("/time-zone")
@login_required
def time_zone() -> Response:
    """Keep the participant's choice of time zone band with the account."""
    chosen = request.form.get("zone", "")
    if chosen not in PARTICIPANT_ZONES:
        abort(400)
    set_time_zone(db(), participant_id(), chosen)
    back = request.form.get("move") or None
    return redirect(url_for("participant.booking", move=back))


@bp.route("/appointments/<appointment_id>/cancel", methods=["GET", "POST"])
@login_required
def cancel(appointment_id: str) -> Any:
    """Cancel an appointment after one confirmation; the time is free again at once."""
    appointment = own_appointment(appointment_id)
    if appointment.cancelled:
        abort(404)
    error = None
    if request.method == "POST":
        try:
            cancel_by_participant(
                db(),
                participant_id(),
                appointment_id,
                now(),
                settings().booking_cutoff_hours * 3600,
            )
        except NotFoundError:
            abort(404)
        except TooLateError:
            error = too_late_text()
        else:
            return redirect(url_for("participant.account", done="cancelled"))
    return render_template(
        "participant/cancel.html", appointment=describe(appointment), error=error
    ), (409 if error else 200)


@bp.post("/appointments/<appointment_id>/dismiss")
@login_required
def dismiss(appointment_id: str) -> Response:
    """Remove an appointment the therapist cancelled from the account page, for good."""
    try:
        dismiss_cancelled(db(), participant_id(), appointment_id)
    except NotFoundError:
        abort(404)
    return redirect(url_for("participant.account", done="dismissed"))
