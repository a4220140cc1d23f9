"""Languages: the first path segment picks one of five; nothing else is consulted.

Tor Browser always sends ``Accept-Language: en-US``, so the header says nothing
about the participant and is never read.
"""

from __future__ import annotations

from babel import Locale
from flask import Flask, current_app, g, request, url_for
from flask_babel import Babel

from stillroom.webapp.paths import package_dir
from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.times import DATE_LOCALES

#: Each language named in itself, for the language links (and only there: inside a
#: sentence a language takes the page language's name, see :func:`language_name`).
LANGUAGE_NAMES = {
    "en": "English",
    "de": "Deutsch",
    "cs": "Čeština",
    "pt": "Português",
    "es": "Español",
}


def current_language() -> str:
    """Return the language of this request (English where the path names none)."""
    if "lang" not in g:
        first = request.path.strip("/").split("/", 1)[0]
        g.lang = first if first in LANGUAGES else "en"
    language: str = g.lang
    return language


def language_name(code: str) -> str:
    """Return the name of the language ``code`` in the language of this page.

    An English page says "with Anna, in German", never "in Deutsch".
    """
    name: str = Locale.parse(DATE_LOCALES[current_language()]).languages[code]
    return name


def language_url(code: str) -> str:
    """Return this page in the language ``code``, or that language's home page."""
    area = current_app.jinja_env.globals["area"]
    endpoint = request.endpoint or ""
    if endpoint.startswith(f"{area}.") and request.method == "GET":
        return url_for(endpoint, **{**(request.view_args or {}), "lang": code})
    return url_for(f"{area}.home", lang=code)


def init_app(app: Flask) -> None:
    """Attach flask-babel with catalogs from the installed ``stillroom.locale``."""
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(package_dir("locale"))
    app.config["BABEL_DEFAULT_LOCALE"] = "en"
    Babel(app, locale_selector=current_language)
    app.jinja_env.globals.update(
        languages=LANGUAGES,
        language_names=LANGUAGE_NAMES,
        language_name=language_name,
        language_url=language_url,
    )
    app.context_processor(lambda: {"lang": current_language()})
