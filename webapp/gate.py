"""The door of each app: session cookie, form tokens, login checks, language in the path.

Both apps follow the same rules (DESIGN §4 and §6) with their own cookie, session
table and pages, so each blueprint gets one :class:`Gate`. The small accessors
below (:func:`settings`, :func:`now`, :func:`db`, :func:`deriver`) serve the views
of both apps; :func:`creation_deriver` the participant app's account creation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from flask import Blueprint, current_app, g, redirect, request, url_for
from gevent import monkey
from gevent.threadpool import ThreadPool
from sqlite_utils import Database
from werkzeug.wrappers import Response

from stillroom.crypto.kdf import KeyDeriver, Runner
from stillroom.crypto.keys import UnwrapError, unwrap_key, wrap_key
from stillroom.crypto.passphrase import MAX_INPUT_CHARS, PassphraseInputError, normalise_passphrase
from stillroom.webapp.db import close_db, get_db
from stillroom.webapp.instance import with_reserve
from stillroom.webapp.security import (
    FormTokenError,
    check_form_token,
    form_token,
    refuse_cross_site_posts,
)
from stillroom.webapp.sessions import (
    Session,
    SessionTable,
    Timeouts,
    end_expired_sessions,
    end_session,
    end_sessions_of,
    load_session,
    session_is_live,
    start_session,
)
from stillroom.webapp.settings import LANGUAGES, Settings
from stillroom.webapp.store import StoreUnwritableError, transaction

View = TypeVar("View", bound=Callable[..., Any])

#: The URL prefix of every page of both apps: the language comes first.
LANGUAGE_PREFIX = f"/<any({','.join(LANGUAGES)}):lang>"


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


def db() -> Database:
    """Return this request's database."""
    return get_db()


def deriver() -> KeyDeriver:
    """Return this app's argon2id key deriver (the portal keeps a slot of its own)."""
    value: KeyDeriver = current_app.config["KEY_DERIVER"]
    return value


def creation_deriver() -> KeyDeriver:
    """Return the argon2id deriver of account creation: slots of its own, never a login's."""
    value: KeyDeriver = current_app.config["CREATION_KEY_DERIVER"]
    return value


def current_session() -> Session | None:
    """Return the live session of this request, if any."""
    session: Session | None = g.get("session")
    return session


def read_passphrase(field: str) -> str:
    """Return the normalised passphrase typed into the form field ``field``.

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


def seal_form_value(value: str) -> str:
    """Carry a value from one page to the next form without storing it anywhere.

    The browser gets it back encrypted under a server key, with the minute it was
    made, so nothing about an unfinished step (a shown passphrase, a new TOTP
    secret) is kept on the server.
    """
    minute = (now() // 60).to_bytes(4, "big")
    sealed = wrap_key(minute + value.encode(), current_app.config["PENDING_KEY"])
    return base64.urlsafe_b64encode(sealed).decode()


def open_form_value(value: str, max_minutes: int) -> str | None:
    """Return the value sealed by :func:`seal_form_value`, or ``None`` if unusable."""
    try:
        raw = unwrap_key(
            base64.urlsafe_b64decode(value.encode("ascii")), current_app.config["PENDING_KEY"]
        )
    except (UnicodeError, binascii.Error, ValueError, UnwrapError):
        return None
    age = now() // 60 - int.from_bytes(raw[:4], "big")
    if not 0 <= age <= max_minutes:
        return None
    return raw[4:].decode()


class Gate:
    """Sessions, form tokens and the language prefix for one blueprint.

    :param bp: the blueprint whose requests pass this gate.
    :param cookie: the cookie's name (cookies ignore ports, so each app has its own).
    :param table: where this app's sessions live.
    :param home: the endpoint a logged-in user lands on.
    :param public_forms: endpoints whose forms are filled in before login; one sent
        after logging in elsewhere meanwhile just leads home.
    """

    def __init__(
        self,
        bp: Blueprint,
        cookie: str,
        table: SessionTable,
        home: str,
        public_forms: tuple[str, ...],
    ) -> None:
        self.bp = bp
        self.cookie = cookie
        self.table = table
        self.home = home
        self.public_forms = public_forms
        self.login = f"{bp.name}.login"
        self.logout = f"{bp.name}.logout"
        bp.url_value_preprocessor(take_language)
        bp.url_defaults(keep_language)
        bp.before_request(self.load_session_and_check_form)
        bp.after_request(self.drop_stale_cookie)
        bp.app_context_processor(self.template_values)

    def load_session_and_check_form(self) -> Response | None:
        """Load the session from the cookie, then refuse any POST without a valid token."""
        token = request.cookies.get(self.cookie_name())
        g.session = load_session(db(), self.table, token, now(), timeouts()) if token else None
        g.stale_cookie = token is not None and g.session is None
        if request.method == "POST":
            refuse_cross_site_posts()
            if request.endpoint == self.logout and g.session is None:
                return None  # nothing to end; the view just confirms and clears the cookie
            try:
                check_form_token(
                    request.form.get("form_token", ""),
                    _binding(),
                    settings().absolute_timeout_hours * 60,
                    now(),
                )
            except FormTokenError:
                return self._explain_stale_form()
        return None

    def _explain_stale_form(self) -> Response:
        """Answer a form whose token no longer fits because the session changed meanwhile.

        Only the two harmless cases get a redirect; every other bad token is refused.

        :raises FormTokenError: when the session did not change.
        """
        if g.stale_cookie:  # the session ended while the form was open
            return redirect(url_for(self.login, done="session-ended"))
        if g.session is not None and request.endpoint in self.public_forms:
            return redirect(url_for(self.home))  # already logged in meanwhile
        raise FormTokenError

    def cookie_name(self) -> str:
        """Return the cookie's name; behind TLS with the ``__Host-`` prefix.

        The prefix makes the browser refuse the cookie unless it is Secure, has no
        Domain and covers the whole site, so a sibling host cannot plant one.
        """
        return f"__Host-{self.cookie}" if current_app.config["SECURE_COOKIES"] else self.cookie

    def drop_stale_cookie(self, response: Response) -> Response:
        """Remove a cookie whose session is over, so the browser stops sending it."""
        if g.get("stale_cookie") and not g.get("cookie_set"):
            self.clear_cookie(response)
        return response

    def template_values(self) -> dict[str, Any]:
        """Give templates the form token and whether someone is logged in."""
        return {
            "form_token": lambda: form_token(_binding(), now()),
            "logged_in": current_session() is not None,
        }

    def login_required(self, view: View) -> View:
        """Send visitors without a live session to the login page."""

        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if current_session() is None:
                done = "session-ended" if g.get("stale_cookie") else None
                return redirect(url_for(self.login, done=done))
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    def session_still_live(self) -> bool:
        """Return whether this request's session has not ended since the request began.

        For a request that outlives its start (the chat's socket): it reads with a pooled
        connection and gives it back at once.
        """
        session = current_session()
        try:
            return session is not None and session_is_live(
                db(), self.table, session.token_hash, now()
            )
        finally:
            close_db()

    def log_in(self, owner_id: str, secret_key: bytes, target: str) -> Response:
        """Replace this browser's session with a new one and send it to ``target``."""
        old = current_session()
        if old is not None:
            end_session(db(), self.table, old.token_hash)
        end_expired_sessions(db(), now())
        token = start_session(db(), self.table, owner_id, secret_key, now(), timeouts())
        return self.set_cookie(redirect(target), token)

    def renew(self, endpoint: str, done: str) -> Response:
        """Give this browser a new session after a credential change ended all of them.

        The change is saved already. If no session can be written (a full disk), the
        browser goes to the login page with the same confirmation: never to an error
        page that would say nothing changed, while the old credential no longer works.
        """
        session = current_session()
        assert session is not None
        try:
            token = start_session(
                db(), self.table, session.owner_id, session.secret_key, now(), timeouts()
            )
        except StoreUnwritableError as problem:
            problem.report()
            return self.clear_cookie(redirect(url_for(self.login, done=done)))
        return self.set_cookie(redirect(url_for(endpoint, done=done)), token)

    def log_out(self, target: str) -> Response:
        """End every session of this account at once, and forget the cookie.

        Logging out anywhere logs out everywhere: a session forgotten in another
        browser must not outlive the person's decision to leave. On a full disk it
        runs on the reserve; should even that fail, this browser's cookie still goes.
        """
        session = current_session()
        if session is not None:

            def end_all() -> None:
                with transaction(db()):
                    end_sessions_of(db(), self.table, session.owner_id)

            try:
                with_reserve(settings(), end_all)
            except StoreUnwritableError as problem:
                problem.report()
        return self.clear_cookie(redirect(target))

    def set_cookie(self, response: Response, token: str) -> Response:
        """Put the session token in the only cookie: HttpOnly, SameSite=Strict, no expiry."""
        response.set_cookie(
            self.cookie_name(),
            token,
            httponly=True,
            samesite="Strict",
            secure=current_app.config["SECURE_COOKIES"],
            path="/",
        )
        g.cookie_set = True
        return response

    def clear_cookie(self, response: Response) -> Response:
        """Tell the browser to forget the session cookie."""
        response.delete_cookie(
            self.cookie_name(),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=current_app.config["SECURE_COOKIES"],
        )
        return response


def take_language(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Move the language from the URL into ``g`` for babel and the templates."""
    g.lang = values.pop("lang") if values else "en"


def keep_language(_endpoint: str, values: dict[str, Any]) -> None:
    """Build links in the current language unless another is asked for."""
    values.setdefault("lang", g.get("lang", "en"))


def _binding() -> bytes:
    session = current_session()
    return session.token_hash if session else b""


#: How much less CPU priority argon2's threads get than the event loop (Linux nice steps).
ARGON2_NICE = 10
#: New accounts' argon2 runs lower still: a flood of them slows itself, not the logins.
#: The other way round, a flood of logins slows account creation (to seconds, with two
#: busy login threads on two cores) but never stops it: it has a thread of its own.
CREATION_NICE = 19


def argon2_runner(nice: int = ARGON2_NICE) -> Runner | None:
    """Return how argon2 should run: in gevent's thread pool when serving, else in place.

    Under the ``stillroom`` command every connection is a greenlet of one thread, and
    argon2 holds its caller for a fifth of a second; in a real thread (argon2-cffi lets
    go of the GIL) it leaves the other connections running. Those threads (and the lane
    threads argon2 starts from them, which inherit it) run at a lower priority, so that
    a flood of logins slows logins, not the chats (``tests/bench/login_flood.py``).
    """
    if not monkey.is_module_patched("threading"):
        return None
    native_id = monkey.get_original("threading", "get_native_id")

    def at_low_priority(function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        os.setpriority(os.PRIO_PROCESS, native_id(), nice)
        # Caught here, in the pool's thread: one that left it would be printed by gevent,
        # traceback and timestamp, and a failed login would be a line in the journal.
        try:
            return True, function(*args)
        except Exception as error:
            return False, error

    # A thread may raise its own nice value but not lower it again without privilege, so
    # each priority has threads of its own; the logins' are the hub's pool.
    pool = gevent.get_hub().threadpool if nice == ARGON2_NICE else ThreadPool(4)

    def in_thread_pool(function: Callable[..., Any], *args: Any) -> Any:
        done, result = pool.apply(at_low_priority, (function, args))
        if not done:
            raise result
        return result

    return in_thread_pool
