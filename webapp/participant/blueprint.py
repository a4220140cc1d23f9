"""The participant blueprint: language in the path, sessions, form tokens."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, current_app, g, redirect, request, url_for
from sqlite_utils import Database
from werkzeug.wrappers import Response

from stillroom.crypto.keys import UnwrapError, unwrap_key, wrap_key
from stillroom.crypto.passphrase import MAX_INPUT_CHARS, PassphraseInputError, normalise_passphrase
from stillroom.webapp.db import get_db
from stillroom.webapp.security import (
    FormTokenError,
    check_form_token,
    form_token,
    refuse_cross_site_posts,
)
from stillroom.webapp.sessions import Session, Timeouts, load_session
from stillroom.webapp.settings import LANGUAGES, Settings

bp = Blueprint("participant", __name__, url_prefix=f"/<any({','.join(LANGUAGES)}):lang>")

COOKIE = "stillroom"
#: How long a shown, not yet confirmed passphrase stays valid, in minutes.
PENDING_MINUTES = 60

View = TypeVar("View", bound=Callable[..., Any])


def settings() -> Settings:
    """Return this deployment's settings."""
    value: Settings = current_app.config["SETTINGS"]
    return value


def now() -> int:
    """Return the current time in whole seconds from the app's clock."""
    return int(current_app.config["CLOCK"]())


def timeouts() -> Timeouts:
    """Return the session timeouts in seconds."""
    s = settings()
    return Timeouts(idle=s.idle_timeout_minutes * 60, absolute=s.absolute_timeout_hours * 3600)


def current_session() -> Session | None:
    """Return the live session of this request, if any."""
    session: Session | None = g.get("session")
    return session


def db() -> Database:
    """Return this request's database."""
    return get_db()


@bp.url_value_preprocessor
def take_language(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Move the language from the URL into ``g`` for babel and the templates."""
    g.lang = values.pop("lang") if values else "en"


@bp.url_defaults
def keep_language(_endpoint: str, values: dict[str, Any]) -> None:
    """Build links in the current language unless another is asked for."""
    values.setdefault("lang", g.get("lang", "en"))


@bp.before_request
def load_session_and_check_form() -> Response | None:
    """Load the session from the cookie, then refuse any POST without a valid form token."""
    token = request.cookies.get(COOKIE)
    g.session = load_session(db(), token, now(), timeouts()) if token else None
    g.stale_cookie = token is not None and g.session is None
    if request.method == "POST":
        refuse_cross_site_posts()
        if request.endpoint == "participant.logout" and g.session is None:
            return None  # nothing to end; the view just confirms and clears the cookie
        try:
            check_form_token(
                request.form.get("form_token", ""),
                _binding(),
                settings().absolute_timeout_hours * 60,
                now(),
            )
        except FormTokenError:
            return _explain_stale_form()
    return None


def _explain_stale_form() -> Response:
    """Answer a form whose token no longer fits because the session changed meanwhile.

    Only the two harmless cases get a redirect; every other bad token is refused.

    :raises FormTokenError: when the session did not change.
    """
    if g.stale_cookie:  # the session ended while the form was open
        return redirect(url_for("participant.login", done="session-ended"))
    if g.session is not None and request.endpoint in ("participant.create", "participant.login"):
        return redirect(url_for("participant.account"))  # already logged in meanwhile
    raise FormTokenError


@bp.after_request
def drop_stale_cookie(response: Response) -> Response:
    """Remove a cookie whose session is over, so the browser stops sending it."""
    if g.get("stale_cookie") and not g.get("cookie_set"):
        clear_session_cookie(response)
    return response


@bp.app_context_processor
def template_values() -> dict[str, Any]:
    """Give templates the form token and whether someone is logged in."""
    return {
        "form_token": lambda: form_token(_binding(), now()),
        "logged_in": current_session() is not None,
    }


def _binding() -> bytes:
    session = current_session()
    return session.token_hash if session else b""


def login_required(view: View) -> View:
    """Send visitors without a live session to the login page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_session() is None:
            done = "session-ended" if g.get("stale_cookie") else None
            return redirect(url_for("participant.login", done=done))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def set_session_cookie(response: Response, token: str) -> Response:
    """Put the session token in the only cookie: HttpOnly, SameSite=Strict, no expiry."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
    g.cookie_set = True
    return response


def clear_session_cookie(response: Response) -> Response:
    """Tell the browser to forget the session cookie."""
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


def read_passphrase(field: str) -> str:
    """Return the normalised passphrase typed into ``field``.

    :raises PassphraseInputError: when it is empty, too long, or holds anything but
        words (control characters, digits, or undecodable bytes, which arrive as
        U+FFFD or as undecoded ``%XX``).
    """
    raw = request.form.get(field, "")
    if len(raw) > MAX_INPUT_CHARS or "\ufffd" in raw:
        raise PassphraseInputError("unreadable passphrase")
    passphrase = normalise_passphrase(raw)
    if not passphrase or not all(char.isalpha() or char in " -" for char in passphrase):
        raise PassphraseInputError("not a passphrase of words")
    return passphrase


def seal_pending(passphrase: str) -> str:
    """Carry a shown passphrase to the confirmation step without storing it anywhere.

    The browser gets it back encrypted under a server key, with the minute it was
    made, so nothing about an unconfirmed passphrase is kept on the server.
    """
    minute = (now() // 60).to_bytes(4, "big")
    sealed = wrap_key(minute + passphrase.encode(), current_app.config["PENDING_KEY"])
    return base64.urlsafe_b64encode(sealed).decode()


def open_pending(value: str) -> str | None:
    """Return the passphrase sealed by :func:`seal_pending`, or ``None`` if unusable."""
    try:
        raw = unwrap_key(
            base64.urlsafe_b64decode(value.encode("ascii")), current_app.config["PENDING_KEY"]
        )
    except (UnicodeError, binascii.Error, ValueError, UnwrapError):
        return None
    age = now() // 60 - int.from_bytes(raw[:4], "big")
    if not 0 <= age <= PENDING_MINUTES:
        return None
    return raw[4:].decode()
