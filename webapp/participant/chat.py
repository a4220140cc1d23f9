"""The participant's side of the chat: the page, its two frames, and deleting it."""

from __future__ import annotations

from typing import Any

from flask import abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from stillroom.webapp import chatroom
from stillroom.webapp.booking import NotFoundError, get_participant_appointment, time_zone_of
from stillroom.webapp.chat import (
    ChatAppointment,
    appointment_for,
    conversation_id_of,
    delete_conversation,
    set_delete_when_chat_ends,
)
from stillroom.webapp.gate import current_session, db, settings
from stillroom.webapp.i18n import current_language
from stillroom.webapp.instance import with_reserve
from stillroom.webapp.participant.blueprint import bp, gate, login_required
from stillroom.webapp.participant.study import assessment_due
from stillroom.webapp.times import format_when


def side() -> chatroom.Side:
    """Return the logged-in participant as a side of the chat."""
    session = current_session()
    assert session is not None
    zone = time_zone_of(db(), session.owner_id, session.secret_key)
    return chatroom.Side("participant", session.secret_key, zone)


def own(appointment_id: str) -> ChatAppointment:
    """Return one of the participant's appointments, or answer 404."""
    session = current_session()
    assert session is not None
    try:
        return appointment_for(db(), "participant", session.owner_id, appointment_id)
    except NotFoundError:
        abort(404)


@bp.get("/chat/<appointment_id>")
@login_required
def chat(appointment_id: str) -> str:
    """The chat page: messages above, the compose box below, each in its own frame."""
    appointment = own(appointment_id)
    details = get_participant_appointment(db(), appointment.participant_id, appointment_id)
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    deleting = conversation_id is not None and bool(
        db()
        .execute("SELECT delete_when_chat_ends FROM conversations WHERE id = ?", [conversation_id])
        .fetchone()[0]
    )
    return render_template(
        "participant/chat.html",
        appointment=appointment,
        therapist=details.therapist_name,
        when=format_when(details.starts_at, details.ends_at, side().zone, current_language()),
        feed_url=url_for("participant.chat_feed", appointment_id=appointment_id),
        compose_url=url_for("participant.chat_compose", appointment_id=appointment_id),
        history_url=url_for("participant.chat_history", appointment_id=appointment_id),
        **chatroom.page_context(appointment, "participant"),
        has_conversation=conversation_id is not None,
        deleting=deleting,
        changed=request.args.get("done") == "ending",
        due=assessment_due(),
    )


@bp.post("/chat/<appointment_id>/when-it-ends")
@login_required
def delete_when_ends(appointment_id: str) -> Response:
    """Remember (or forget) that the conversation goes when the chat ends."""
    appointment = own(appointment_id)
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    if conversation_id is None:
        abort(404)
    set_delete_when_chat_ends(db(), conversation_id, request.form.get("wanted") == "1")
    # Lands beside the button, where the new state is said, not at the top of the page.
    return redirect(
        url_for("participant.chat", appointment_id=appointment_id, done="ending", _anchor="ending")
    )


@bp.route("/chat/<appointment_id>/delete", methods=["GET", "POST"])
@login_required
def delete_chat(appointment_id: str) -> Any:
    """Delete the whole conversation with this therapist now, after one confirmation."""
    appointment = own(appointment_id)
    conversation_id = conversation_id_of(db(), appointment.participant_id, appointment.therapist_id)
    if conversation_id is None:
        abort(404)
    if request.method == "GET":
        return render_template("participant/chat_delete.html", appointment_id=appointment_id)
    with_reserve(settings(), lambda: delete_conversation(db(), conversation_id))
    return redirect(url_for("participant.account", done="chat-deleted"))


chatroom.add_chat_routes(bp, own, side, login_required, gate.session_still_live)
