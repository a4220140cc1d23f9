"""The therapist's private notes about a participant, one page per pseudonym."""

from __future__ import annotations

from typing import Any

from flask import abort, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l

from stillroom.webapp.gate import current_session, db, now, settings
from stillroom.webapp.notes import (
    MAX_NOTE_CHARS,
    NoteLockedError,
    NoteTooLongError,
    participant_of,
    read_note,
    save_note,
)
from stillroom.webapp.portal.blueprint import bp, login_required
from stillroom.webapp.portal.pages import notice

TOO_LONG = _l("Notes may have at most %(count)s characters.", count=MAX_NOTE_CHARS)
LOCKED = _l(
    "These notes were sealed to a key you no longer have, so they cannot be shown or changed."
)


@bp.route("/notes/<pseudonym>", methods=["GET", "POST"])
@login_required
def notes(pseudonym: str) -> Any:
    """Read and change your private notes about the participant known to you as ``pseudonym``."""
    session = current_session()
    assert session is not None
    participant_id = participant_of(db(), session.owner_id, pseudonym)
    if participant_id is None:
        abort(404)
    error = None
    text = request.form.get("text", "")
    if request.method == "POST":
        try:
            save_note(db(), session.owner_id, participant_id, text, now())
        except NoteTooLongError:
            error = TOO_LONG
        except NoteLockedError:
            error = LOCKED
        else:
            return redirect(url_for("portal.notes", pseudonym=pseudonym, done="notes-saved"))
    edited_day = None
    if error is None:
        try:
            note = read_note(db(), session.owner_id, participant_id, session.secret_key)
        except NoteLockedError:
            note, error = None, LOCKED
        text = note.text if note else ""
        edited_day = note.edited_day if note else None
    return render_template(
        "portal/notes.html",
        pseudonym=pseudonym.strip().upper(),
        text=text,
        edited_day=edited_day,
        max_chars=MAX_NOTE_CHARS,
        retention_days=settings().note_retention_days,
        notice=notice(),
        error=error,
    ), (400 if error else 200)
