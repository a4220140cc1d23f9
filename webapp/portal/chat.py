"""The therapist's side of the chat: the page, its two frames, extending and closing."""

from __future__ import annotations

import datetime
from typing import Any

from flask import redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from stillroom.webapp import chatroom
from stillroom.webapp.booking import block_participant
from stillroom.webapp.chat import (
    EXTENSION_MINUTES,
    MAX_EXTENSION_MINUTES,
    ChatAppointment,
    close_chat,
    extend_chat,
)
from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.i18n import current_language
from stillroom.webapp.portal.appointments import own, pseudonym_of
from stillroom.webapp.portal.blueprint import bp, current_therapist, gate, login_required
from stillroom.webapp.portal.course import course_context
from stillroom.webapp.portal.pages import notice
from stillroom.webapp.portal.safety import safety_context
from stillroom.webapp.times import format_when


def side() -> chatroom.Side:
    """Return the logged-in therapist as a side of the chat."""
    session = current_session()
    assert session is not None
    return chatroom.Side("therapist", session.secret_key, current_therapist().time_zone)


@bp.get("/chat/<appointment_id>")
@login_required
def chat(appointment_id: str) -> str:
    """The chat page, with extending and closing (shown before it opens too: nothing reloads it)."""
    appointment = own(appointment_id)
    return render_template(
        "portal/chat.html",
        appointment=appointment,
        pseudonym=pseudonym_of(appointment),
        when=format_when(
            appointment.starts_at, appointment.ends_at, side().zone, current_language()
        ),
        feed_url=url_for("portal.chat_feed", appointment_id=appointment_id),
        compose_url=url_for("portal.chat_compose", appointment_id=appointment_id),
        history_url=url_for("portal.chat_history", appointment_id=appointment_id),
        **chatroom.page_context(appointment, "portal"),
        over=appointment.is_over(now()),
        can_extend=appointment.extra_minutes + EXTENSION_MINUTES <= MAX_EXTENSION_MINUTES,
        extension=EXTENSION_MINUTES,
        notice=notice(),
        **course_context(appointment),
        **safety_context(appointment),
        **assist_context(appointment_id),
    )


def assist_context(appointment_id: str) -> dict[str, Any]:
    """Return where the chat page finds its support frame and draft form, when they are on."""
    features = settings().assist_features
    return {
        "assist_url": url_for("portal.chat_assist", appointment_id=appointment_id)
        if {"related", "risk"} & set(features)
        else None,
        "draft_url": url_for("portal.draft", appointment_id=appointment_id)
        if "summary" in features
        else None,
    }


@bp.post("/chat/<appointment_id>/extend")
@login_required
def extend(appointment_id: str) -> Response:
    """Keep the open chat open another 15 minutes, up to the limit."""
    appointment = own(appointment_id)
    if not appointment.is_open(now(), settings().chat_opens_minutes_before):
        return back_unchanged(appointment)
    done = "extended" if extend_chat(db(), appointment, now()) else "not-extended"
    chatroom.announce(appointment)  # held feeds show the new closing time
    return redirect(url_for("portal.chat", appointment_id=appointment_id, done=done))


def back_unchanged(appointment: ChatAppointment) -> Response:
    """Return to a chat that is not open, saying so if it has yet to open."""
    done = None if appointment.is_over(now()) else "not-open"
    return redirect(url_for("portal.chat", appointment_id=appointment.id, done=done))


@bp.route("/chat/<appointment_id>/block", methods=["GET", "POST"])
@login_required
def block(appointment_id: str) -> Any:
    """Stop this participant from booking again, after one confirmation."""
    appointment = own(appointment_id)
    if request.method == "GET":
        return render_template(
            "portal/block.html", appointment=appointment, pseudonym=pseudonym_of(appointment)
        )
    # Days, never minutes: accounts made on the block's day count as made after it.
    today = datetime.datetime.fromtimestamp(now(), datetime.UTC).date().isoformat()
    withhold = today if request.form.get("withhold") == "yes" else None
    block_participant(db(), appointment.therapist_id, appointment_id, withhold)
    return redirect(url_for("portal.chat", appointment_id=appointment_id, done="blocked"))


@bp.route("/chat/<appointment_id>/close", methods=["GET", "POST"])
@login_required
def close(appointment_id: str) -> Any:
    """End the chat now, after one confirmation; both sides can still read it.

    A chat that has not opened, or is over already, stays as it is.
    """
    appointment = own(appointment_id)
    if not appointment.is_open(now(), settings().chat_opens_minutes_before):
        return back_unchanged(appointment)
    if request.method == "GET":
        return render_template(
            "chat/close.html", appointment=appointment, pseudonym=pseudonym_of(appointment)
        )
    close_chat(db(), appointment)
    chatroom.announce(appointment)  # held feeds say at once that it ended
    return redirect(url_for("portal.chat", appointment_id=appointment_id, done="closed"))


chatroom.add_chat_routes(bp, own, side, login_required, gate.session_still_live)
