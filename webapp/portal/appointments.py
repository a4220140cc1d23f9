"""The therapist's own appointments, as the chat and course pages find them.

Another therapist's appointment, and one that is gone, get the same calm answer.
"""

from __future__ import annotations

from flask import render_template, request

from stillroom.webapp.booking import NotFoundError
from stillroom.webapp.chat import ChatAppointment, appointment_for
from stillroom.webapp.gate import current_session, db
from stillroom.webapp.portal.blueprint import bp


def own(appointment_id: str) -> ChatAppointment:
    """Return one of the therapist's appointments, or answer 404 saying calmly it is gone."""
    session = current_session()
    assert session is not None
    try:
        return appointment_for(db(), "therapist", session.owner_id, appointment_id)
    except NotFoundError:
        raise ChatGoneError from None


class ChatGoneError(Exception):
    """The appointment of a chat is not (or no longer) one of this therapist's."""


@bp.errorhandler(ChatGoneError)
def gone(error: ChatGoneError) -> tuple[str, int]:
    """Say calmly that a chat is no longer here, in the page or inside its frame."""
    # Appointment ids are random: an unknown one was deleted with its participant's
    # account or by the purge. Nothing else is kept, so the page says no more than that;
    # another therapist's appointment gets the same answer and stays hidden.
    framed = request.endpoint in ("portal.chat_feed", "portal.chat_compose")
    return render_template("chat/gone.html", framed=framed), 404


def pseudonym_of(appointment: ChatAppointment) -> str:
    """Return the participant's pseudonym for this therapist."""
    row = (
        db()
        .execute(
            "SELECT pseudonym FROM pairs WHERE participant_id = ? AND therapist_id = ?",
            [appointment.participant_id, appointment.therapist_id],
        )
        .fetchone()
    )
    return str(row[0]) if row else "?"
