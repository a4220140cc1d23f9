"""The portal's information pages and its confirmations."""

from __future__ import annotations

from flask import render_template, request
from flask_babel import lazy_gettext as _l

from stillroom.webapp.chat import EXTENSION_MINUTES, MAX_EXTENSION_MINUTES
from stillroom.webapp.gate import settings
from stillroom.webapp.inventory import INVENTORY, retention_values
from stillroom.webapp.portal.blueprint import bp

#: Short confirmations shown after an action; the URL carries only the key.
NOTICES = {
    "enrolled": _l(
        "Your account is ready. From now on, log in with your login name, your passphrase"
        " and a code from your app."
    ),
    "logged-out": _l("You are logged out."),
    "passphrase-changed": _l(
        "Your passphrase has been changed. Other sessions have been logged out."
    ),
    "renew": _l(
        "Stillroom now makes every therapist's passphrase, so that no chosen password"
        " guards the keys to your conversations. Your old password has brought you here"
        " once more: take the new passphrase below, and log in with it from now on."
    ),
    "session-ended": _l("Your session has ended. Please log in again."),
    "published": _l("Your new times are published."),
    "slot-deleted": _l("The time has been withdrawn."),
    "cancelled": _l("The appointment is cancelled. The participant sees your note on their page."),
    "blocked": _l("This participant can no longer book any time."),
    "notes-saved": _l("Your notes are saved."),
    "shown-to-all": _l("Your free times are shown to every account again."),
    "extended": _l(
        "The chat now stays open %(minutes)s minutes longer.", minutes=EXTENSION_MINUTES
    ),
    "not-extended": _l(
        "The chat cannot be extended any further: it ends at most %(minutes)s minutes after"
        " the booked time.",
        minutes=MAX_EXTENSION_MINUTES,
    ),
    "closed": _l("The chat is closed. You can both still read it until it is deleted."),
    "not-open": _l(
        "The chat has not opened yet, so nothing was changed. Once it is open, you can"
        " extend it or close it; to call the appointment off, cancel it on the list of"
        " appointments."
    ),
}


def notice() -> object | None:
    """Return the confirmation named in ``?done=``, if it is one we know.

    Only the page a redirect leads to shows it: a form sent from that page keeps
    the address, and its answer must not confirm what came before beside its error.
    """
    if request.method != "GET":
        return None
    return NOTICES.get(request.args.get("done", ""))


@bp.get("/privacy")
def privacy() -> str:
    """What the service stores, why, and for how long, from the data inventory."""
    return render_template(
        "portal/privacy.html",
        tables=[table for table in INVENTORY if table.public],
        retention=retention_values(settings()),
    )
