"""The therapist portal: enrolment, login with passphrase and TOTP, availability, appointments.

Served on its own port for a TLS reverse proxy; the onion service never reaches it.
Every URL starts with the language (``/de/…``); ``/`` leads to the English login.
"""

from __future__ import annotations

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from stillroom.webapp.portal import (
    account,
    appointments,
    assist,
    chat,
    course,
    notes,
    pages,
    research,
    safety,
    schedule,
)
from stillroom.webapp.portal.blueprint import bp


def to_default_language() -> Response:
    """Send ``/`` to the portal's start page in English (each page links the others)."""
    return redirect(url_for("portal.home", lang="en"))


def init_app(app: Flask) -> None:
    """Register the portal blueprint and the redirect at ``/``."""
    app.add_url_rule("/", "to_default_language", to_default_language)
    app.register_blueprint(bp)


__all__ = [
    "account",
    "appointments",
    "assist",
    "chat",
    "course",
    "init_app",
    "notes",
    "pages",
    "research",
    "safety",
    "schedule",
]
