"""Information pages: language choice, home, help now, what we store."""

from __future__ import annotations

from flask import abort, current_app, render_template, request
from flask_babel import force_locale, gettext
from flask_babel import lazy_gettext as _l

from stillroom.webapp.gate import settings
from stillroom.webapp.i18n import LANGUAGE_NAMES, current_language
from stillroom.webapp.inventory import INVENTORY, Table, retention_values
from stillroom.webapp.participant.blueprint import bp

#: Short confirmations shown after an action; the URL carries only the key.
NOTICES = {
    "created": _l("Your account is ready. Keep your passphrase safe: it is the only way in."),
    "logged-out": _l("You are logged out."),
    "replaced": _l("Your passphrase has been replaced. The old one no longer works."),
    "deleted": _l("Your account and everything in it have been deleted."),
    "session-ended": _l("Your session has ended. Please log in again."),
    "booked": _l("Your appointment is booked. You can see it below."),
    "moved": _l("Your appointment has been moved. You can see the new time below."),
    "cancelled": _l("Your appointment has been cancelled."),
    "dismissed": _l("The cancelled appointment has been removed from this page."),
    "chat-deleted": _l("The conversation has been deleted, with every message in it."),
}


def notice() -> object | None:
    """Return the confirmation named in ``?done=``, if it is one we know.

    Only the page a redirect leads to shows it: a form sent from that page keeps
    the address, and its answer must not confirm what came before beside its error.
    """
    if request.method != "GET":
        return None
    return NOTICES.get(request.args.get("done", ""))


def choose_language() -> str:
    """Offer the five languages, each introduced in itself."""
    choices = []
    for code, name in LANGUAGE_NAMES.items():
        with force_locale(code):
            choices.append((code, name, gettext("Free, anonymous and confidential help.")))
    return render_template("participant/choose.html", choices=choices)


@bp.get("/")
def home() -> str:
    """What the service is, how it works and how to stay safe."""
    return render_template("participant/home.html", notice=notice())


@bp.get("/help")
def help_now() -> str:
    """Emergency number and the operator's local crisis lines."""
    lines = settings().crisis_lines(current_language())
    return render_template("participant/help.html", lines=lines)


@bp.get("/privacy")
def privacy() -> str:
    """What is stored, why, and for how long, from the data inventory.

    Each table's fields are on a page of their own, so that this one stays small.
    """
    return render_template(
        "participant/privacy.html",
        tables=participant_tables(),
        retention=retention_values(settings()),
        details_endpoint="participant.privacy_table",
        study_runs=current_app.config.get("STUDY") is not None,
    )


def participant_tables() -> list[Table]:
    """Return the tables the participants' page describes."""
    return [table for table in INVENTORY if table.public and table.about_participants]


@bp.get("/privacy/<table_name>")
def privacy_table(table_name: str) -> str:
    """Every field of one table: what it holds and how it is protected."""
    found = [table for table in participant_tables() if table.name == table_name]
    if not found:
        abort(404)
    return render_template(
        "participant/privacy.html",
        tables=found,
        retention=retention_values(settings()),
        details_endpoint=None,
    )
