"""HTTP hygiene in one place: headers, form tokens, size limits and error pages.

Every response passes :func:`harden_response`; every error, whatever raised it,
ends on the same small generic page, in the language of the URL when there is one.
"""

from __future__ import annotations

import base64
import binascii
import logging
from types import TracebackType

from flask import Flask, Response, current_app, g, render_template, request
from flask_babel import get_translations
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    InternalServerError,
    MisdirectedRequest,
    ServiceUnavailable,
)

from stillroom.crypto.kdf import KdfBusyError
from stillroom.crypto.keys import UnwrapError, open_value, seal_value
from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.store import StoreUnwritableError

log = logging.getLogger(__name__)

#: DESIGN §6's policy, spelled without a space after each ";" (the grammar allows none,
#: and each answer saves 6 bytes: the chat sends dozens of them).
CONTENT_SECURITY_POLICY = (
    "default-src 'none';style-src 'self';img-src 'self';form-action 'self';"
    "frame-src 'self';frame-ancestors 'self';base-uri 'none'"
)

#: Chat pages alone may run the live script and open its WebSocket.
LIVE_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + ";script-src 'self';connect-src 'self'"

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: What each error page says. The same few sentences for everyone, so an error
#: reveals nothing about what exists.
ERROR_TEXT = {
    400: _l("Something in this request could not be read. Please go back and try again."),
    403: _l("This request was refused. Please go back, reload the page and try again."),
    404: _l("There is no page at this address."),
    421: _l("This address is not served here. Please open the service in Tor Browser."),
    405: _l("This page cannot be used that way. Please go back and use the buttons."),
    409: _l("Something changed in the meantime. Please go back, reload the page and try again."),
    413: _l("What you sent is too long. Please shorten it and try again."),
    500: _l("Something went wrong on our side. Nothing you did caused it. Please try again."),
    503: _l("The service is busy right now. Please wait a moment and try again."),
}


#: Shown when a write cannot be made: the disk is full, or the database read-only.
NOT_SAVED_TEXT = _l(
    "This could not be saved just now, so nothing was changed. Please try again in a few minutes."
)
#: Shown when a Tor2web proxy forwards a request: it would see everything.
TOR2WEB_TEXT = _l(
    "This service cannot be used through a Tor2web proxy, because such a proxy sees"
    " everything you do here. Please open the .onion address in Tor Browser."
)


class Tor2webError(Forbidden):
    """A Tor2web proxy forwarded the request; it would see the participant's traffic."""


class FormTokenError(BadRequest):
    """A form came back without a valid token: expired, from another session, or forged."""

    code = 400


def harden_response(response: Response) -> Response:
    """Add the security headers and keep personal pages out of every cache.

    A 304 stays bare: it only confirms the copy the browser holds, which keeps that
    copy's headers, and a chat feed's idle reload must fit in one Tor cell.
    """
    response.headers.pop("Server", None)
    if response.status_code == 304:
        return response
    response.headers.update(SECURITY_HEADERS)
    if g.get("live_script"):
        response.headers["Content-Security-Policy"] = LIVE_CONTENT_SECURITY_POLICY
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def form_token(binding: bytes, now: float) -> str:
    """Return a token for a form, bound to ``binding`` (a session hash, or ``b""``).

    The token carries the minute it was issued, encrypted (AEAD under the server's form
    key, with the binding as associated data), so no state is needed before login, no
    cookie is set for it, and the token says nothing about the server's clock: its
    minute, read across a minute's turn, would place that clock to a few milliseconds.
    """
    minute = int(now // 60).to_bytes(4, "big")
    sealed = seal_value(minute, current_app.config["FORM_KEY"], b"form-token" + binding)
    return base64.urlsafe_b64encode(sealed).decode()


def check_form_token(token: str, binding: bytes, max_age_minutes: int, now: float) -> None:
    """Accept a form token issued for ``binding`` within ``max_age_minutes``.

    :raises FormTokenError: for a missing, forged, foreign or expired token.
    """
    try:
        sealed = base64.urlsafe_b64decode(token.encode("ascii"))
        minute = open_value(sealed, current_app.config["FORM_KEY"], b"form-token" + binding)
    except (UnicodeError, binascii.Error, ValueError, UnwrapError):
        raise FormTokenError from None
    age = int(now // 60) - int.from_bytes(minute, "big")
    if len(minute) != 4 or not 0 <= age <= max_age_minutes:
        raise FormTokenError


def refuse_cross_site_posts() -> None:
    """Refuse a POST that the browser says came from another site.

    Fetch metadata is sent even under ``Referrer-Policy: no-referrer``, and it stops
    another site from logging a visitor into an account of the attacker's choosing.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if request.method == "POST" and site not in (None, "same-origin", "none"):
        raise Forbidden


def refuse_foreign_hosts() -> None:
    """Answer only for 127.0.0.1 and this app's own public name.

    The participant app's public name is its onion address; the portal's is the
    host of its public URL. Any other Host header means DNS rebinding, a misrouted
    proxy or a Tor2web gateway, and an onion address never reaches the portal.

    :raises Tor2webError: for a request that a Tor2web proxy forwarded.
    :raises MisdirectedRequest: for any other Host.
    """
    if "X-Tor2web" in request.headers:
        raise Tor2webError
    host = request.host.lower().rsplit(":", 1)[0]
    allowed = {"127.0.0.1", current_app.config["ONION_ADDRESS"], current_app.config["PUBLIC_HOST"]}
    if host not in allowed:
        raise MisdirectedRequest


def render_error(error: HTTPException) -> tuple[str, int, dict[str, str]]:
    """Render the generic error page for an HTTP error."""
    code = error.code if error.code in ERROR_TEXT else 500
    message = TOR2WEB_TEXT if isinstance(error, Tor2webError) else ERROR_TEXT[code]
    headers = {"Retry-After": "5"} if code == 503 else {}
    return render_template("error.html", code=code, message=message), code, headers


def describe_failure(error: BaseException) -> str:
    """Say what broke and where in our code, for the log: never a value, URL or form.

    The place is a module and line (``stillroom.webapp.chat:120``), the innermost of
    our own code, with the library module that raised it when that is not ours;
    module names, not file paths, so no path of the host reaches the log either.
    """
    ours = theirs = ""
    trace: TracebackType | None = error.__traceback__
    while trace is not None:
        module = str(trace.tb_frame.f_globals.get("__name__", "?"))
        if module.startswith("stillroom."):
            ours, theirs = f"{module}:{trace.tb_lineno}", ""
        else:
            theirs = module
        trace = trace.tb_next
    where = f" at {ours}" if ours else ""
    inside = f" inside {theirs}" if theirs else ""
    return f"{type(error).__name__}{where}{inside}"


def log_failure(error: BaseException) -> None:
    """Log an unexpected failure by :func:`describe_failure`, without its traceback."""
    log.error("unhandled %s", describe_failure(error))


def render_unexpected(error: Exception) -> tuple[str, int, dict[str, str]]:
    """Log what broke (type and place, never values) and show the generic 500 page."""
    log_failure(error)
    return render_error(InternalServerError())


def render_unwritable(error: StoreUnwritableError) -> tuple[str, int, dict[str, str]]:
    """Tell the operator once a minute; tell the user calmly that nothing was changed."""
    error.report()
    return (
        render_template("error.html", code=503, message=NOT_SAVED_TEXT),
        503,
        {"Retry-After": "60"},
    )


def render_busy(_error: KdfBusyError) -> tuple[str, int, dict[str, str]]:
    """Show the small 'busy' page when every argon2 slot is taken."""
    return render_error(ServiceUnavailable())


#: The templates of the error page: loaded at startup, so that it can still be shown
#: when the process has no file descriptor left to open them.
ERROR_TEMPLATES = ("error.html", "base.html", "_form_token.html")


def preload_error_pages(app: Flask) -> None:
    """Compile the error page's templates and read every language's translations now.

    Both stay cached for the life of the process (templates are never reloaded outside
    debug mode), so a flood that uses up the file descriptors still gets the calm page.
    """
    for name in ERROR_TEMPLATES:
        app.jinja_env.get_template(name)
    for language in LANGUAGES:
        with app.test_request_context(f"/{language}/"):
            get_translations()


def init_app(app: Flask) -> None:
    """Install the headers, the request limits and the error pages."""
    settings = app.config["SETTINGS"]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_kib * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_request_kib * 1024
    app.before_request(refuse_foreign_hosts)
    app.after_request(harden_response)
    app.register_error_handler(HTTPException, render_error)
    app.register_error_handler(KdfBusyError, render_busy)
    app.register_error_handler(StoreUnwritableError, render_unwritable)
    app.register_error_handler(Exception, render_unexpected)
    app.jinja_env.globals["error_text"] = ERROR_TEXT
