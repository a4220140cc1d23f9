"""The therapist's schedule: upcoming appointments, availability, cancelling."""

from __future__ import annotations

import datetime
import re
from typing import Any

from babel.dates import format_date
from flask import abort, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.webapp.booking import (
    MAX_DURATION_MINUTES,
    MAX_NOTE_CHARS,
    MAX_WEEKS,
    MIN_DURATION_MINUTES,
    Appointment,
    NotFoundError,
    OverlapError,
    SlotBookedError,
    SlotInputError,
    cancel_by_therapist,
    delete_free_slot,
    publish_slots,
    stop_withholding,
    therapist_appointments,
    therapist_slots,
    withholding_since,
)
from stillroom.webapp.gate import db, now, settings
from stillroom.webapp.i18n import current_language
from stillroom.webapp.keyslots import deletion_day
from stillroom.webapp.portal.blueprint import bp, current_therapist, login_required
from stillroom.webapp.portal.pages import notice
from stillroom.webapp.therapists import Therapist
from stillroom.webapp.times import DATE_LOCALES, LocalTimeError, format_when, local, to_utc

DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
TIME = re.compile(r"[0-9]{2}:[0-9]{2}\Z")

UNREADABLE_TIME = _l("The date or time could not be read. Please use the date and time fields.")
SLOT_PROBLEMS = {
    "past": _l("A time must start in the future."),
    "far": _l("A time can be at most a year ahead."),
    "duration": _l(
        "The duration must be between %(low)s and %(high)s minutes.",
        low=MIN_DURATION_MINUTES,
        high=MAX_DURATION_MINUTES,
    ),
    "weeks": _l("A weekly pattern can cover 1 to %(count)s weeks.", count=MAX_WEEKS),
    "languages": _l("Please choose at least one of your languages."),
}
CLOCK_CHANGE = _l(
    "The clocks change that night, so this time does not exist or happens twice."
    " Please choose another time."
)
OVERLAP = _l("This overlaps a time you already have (%(when)s). Nothing was published.")
BOOKED = _l("This time is booked. To free it, cancel the appointment.")
NOTE_TOO_LONG = _l("The note may have at most %(count)s characters.", count=MAX_NOTE_CHARS)


class SlotFormError(Exception):
    """The availability form holds something we cannot publish; the message says what."""


def when(therapist: Therapist, starts_at: int, ends_at: int) -> str:
    """Return a time range in the therapist's own zone and language."""
    return format_when(starts_at, ends_at, therapist.time_zone, current_language())


def home_section(item: Appointment, moment: int, zone: str, retention_days: int) -> str | None:
    """Return where the home page lists an appointment: today, later or earlier, or nowhere.

    Today holds every chat of the day, ended ones too, and one still running past
    midnight. Earlier chats stay listed while their messages are kept, by the rule
    the purge follows; a cancelled one had no chat, so it is not listed.
    """
    day, today = local(item.starts_at, zone).date(), local(moment, zone).date()
    if day == today or (day < today and moment < item.closes_at()):
        return "today"
    if day > today:
        return "later"
    utc_today = datetime.datetime.fromtimestamp(moment, datetime.UTC).date().isoformat()
    if item.cancelled or deletion_day(item.closes_at(), retention_days) <= utc_today:
        return None
    return "earlier"


@bp.get("/")
@login_required
def home() -> str:
    """Today's chats (ended ones too), later appointments, and earlier chats still kept."""
    therapist = current_therapist()
    moment = now()
    retention = settings().message_retention_days
    days: dict[str, list[tuple[Appointment, str]]] = {"earlier": [], "today": [], "later": []}
    for item in therapist_appointments(db(), therapist.id, moment - (retention + 1) * 24 * 3600):
        section = home_section(item, moment, therapist.time_zone, retention)
        if section is not None:
            days[section].append((item, when(therapist, item.starts_at, item.ends_at)))
    return render_template(
        "portal/home.html",
        therapist=therapist,
        today=days["today"],
        later=days["later"],
        earlier=days["earlier"][::-1],  # the most recent first
        now=moment,
        notice=notice(),
    )


def read_slot_form(therapist: Therapist) -> list[str]:
    """Publish the times the availability form describes; return their ids.

    :raises SlotFormError: with the message to show.
    """
    form = request.form
    if not (DATE.match(form.get("date", "")) and TIME.match(form.get("time", ""))):
        raise SlotFormError(UNREADABLE_TIME)
    try:
        day = datetime.date.fromisoformat(form["date"])
        clock = datetime.time.fromisoformat(form["time"])
        duration = int(form.get("duration", ""))
        weeks = int(form.get("weeks", "1") or "1")
    except ValueError:
        raise SlotFormError(UNREADABLE_TIME) from None
    if not 1 <= weeks <= MAX_WEEKS:
        raise SlotFormError(SLOT_PROBLEMS["weeks"])
    try:
        starts = [
            to_utc(day + datetime.timedelta(weeks=week), clock, therapist.time_zone)
            for week in range(weeks)
        ]
    except LocalTimeError:
        raise SlotFormError(CLOCK_CHANGE) from None
    except OverflowError:  # a date near year 9999
        raise SlotFormError(UNREADABLE_TIME) from None
    languages = tuple(code for code in therapist.languages if code in form.getlist("languages"))
    try:
        return publish_slots(
            db(), therapist.id, starts, duration, languages, therapist.languages, now()
        )
    except SlotInputError as problem:
        raise SlotFormError(SLOT_PROBLEMS[problem.reason]) from None
    except OverlapError as overlap:
        clash = when(therapist, overlap.starts_at, overlap.ends_at)
        raise SlotFormError(OVERLAP % {"when": clash}) from None


@bp.route("/availability", methods=["GET", "POST"])
@login_required
def availability() -> Any:
    """Publish single times or weekly patterns; see, and withdraw, free ones."""
    therapist = current_therapist()
    error = None
    if request.method == "POST":
        try:
            read_slot_form(therapist)
        except SlotFormError as problem:
            error = problem.args[0]
        else:
            return redirect(url_for("portal.availability", done="published"))
    return render_availability(therapist, error)


def render_availability(therapist: Therapist, error: object | None) -> Any:
    """Render the availability page, with the form as it was sent."""
    slots = therapist_slots(db(), therapist.id, now())
    return render_template(
        "portal/availability.html",
        therapist=therapist,
        slots=[(slot, when(therapist, slot.starts_at, slot.ends_at)) for slot in slots],
        form=request.form if "date" in request.form else {},
        withheld_since=withheld_since(therapist),
        limits={
            "low": MIN_DURATION_MINUTES,
            "high": MAX_DURATION_MINUTES,
            "weeks": MAX_WEEKS,
        },
        error=error,
        notice=notice(),
    ), (409 if error is BOOKED else 400 if error else 200)


def withheld_since(therapist: Therapist) -> str | None:
    """Return the day written out from which new accounts do not see this therapist's times."""
    day = withholding_since(db(), therapist.id)
    if day is None:
        return None
    return format_date(
        datetime.date.fromisoformat(day), "full", locale=DATE_LOCALES[current_language()]
    )


@bp.post("/availability/show-to-all")
@login_required
def show_to_all() -> Response:
    """Show the therapist's free times to accounts made after a block again."""
    stop_withholding(db(), current_therapist().id)
    return redirect(url_for("portal.availability", done="shown-to-all"))


@bp.post("/slots/<slot_id>/delete")
@login_required
def delete_slot(slot_id: str) -> Any:
    """Withdraw one free time."""
    therapist = current_therapist()
    try:
        delete_free_slot(db(), therapist.id, slot_id)
    except NotFoundError:
        abort(404)
    except SlotBookedError:
        return render_availability(therapist, BOOKED)
    return redirect(url_for("portal.availability", done="slot-deleted"))


@bp.route("/appointments/<appointment_id>/cancel", methods=["GET", "POST"])
@login_required
def cancel(appointment_id: str) -> Any:
    """Cancel an upcoming appointment, with a short note the participant will see."""
    therapist = current_therapist()
    ours = {item.id: item for item in therapist_appointments(db(), therapist.id, now())}
    appointment = ours.get(appointment_id)
    if appointment is None or appointment.cancelled:
        abort(404)
    error = None
    if request.method == "POST":
        raw = request.form.get("note", "")
        # One line of printable text: no control, format or bidi-override characters.
        note = " ".join("".join(c for c in raw if c.isprintable() or c.isspace()).split())
        if len(note) > MAX_NOTE_CHARS:
            error = NOTE_TOO_LONG
        else:
            try:
                cancel_by_therapist(
                    db(),
                    therapist.id,
                    appointment_id,
                    note,
                    now(),
                    settings().appointment_retention_days,
                )
            except NotFoundError:
                abort(404)
            return redirect(url_for("portal.home", done="cancelled"))
    return render_template(
        "portal/cancel.html",
        appointment=appointment,
        when=when(therapist, appointment.starts_at, appointment.ends_at),
        max_note=MAX_NOTE_CHARS,
        note=request.form.get("note", ""),
        error=error,
    ), (400 if error else 200)
