"""The participant app's pages: information, accounts and booking.

Every URL starts with the language (``/de/…``); ``/`` only offers the choice.
"""

from __future__ import annotations

from flask import Flask

from stillroom.webapp.participant import account, booking, chat, pages, study
from stillroom.webapp.participant.blueprint import bp


def init_app(app: Flask) -> None:
    """Register the participant blueprint and the language-choice page at ``/``."""
    app.add_url_rule("/", "choose_language", pages.choose_language)
    app.register_blueprint(bp)


__all__ = ["account", "booking", "chat", "init_app", "pages", "study"]
