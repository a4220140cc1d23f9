"""Accounts without identifiers: create, log in, log out, replace the passphrase, delete."""

from __future__ import annotations

import datetime
from typing import Any

import gevent
from flask import current_app, make_response, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.crypto.kdf import KeyDeriver
from stillroom.crypto.keys import UnwrapError
from stillroom.crypto.passphrase import PassphraseInputError, generate_passphrase
from stillroom.webapp.accounts import (
    AccountExistsError,
    UnknownPassphraseError,
    Unlocked,
    create_account,
    delete_account,
    passphrase_matches,
    replace_passphrase,
    unlock_account,
)
from stillroom.webapp.booking import (
    AccountTooNewError,
    SessionsStoppedError,
    upcoming_appointments,
)
from stillroom.webapp.chat import RateLimiter
from stillroom.webapp.db import give_back_while_waiting
from stillroom.webapp.gate import (
    CREATION_NICE,
    argon2_runner,
    creation_deriver,
    current_session,
    db,
    deriver,
    now,
    read_passphrase,
    settings,
)
from stillroom.webapp.i18n import current_language
from stillroom.webapp.instance import with_reserve
from stillroom.webapp.participant.blueprint import (
    bp,
    gate,
    login_required,
    open_pending,
    seal_pending,
)
from stillroom.webapp.participant.booking import (
    books_from,
    course_summary,
    my_appointments,
    study,
)
from stillroom.webapp.participant.booking import participant_id as current_participant_id
from stillroom.webapp.participant.pages import notice
from stillroom.webapp.participant.study import intake_redirect, study_values
from stillroom.webapp.study.course import NotInCourseError, WaitlistError, may_book
from stillroom.webapp.times import DEFAULT_ZONE

UNREADABLE = _l("This passphrase could not be read. Type only the words, separated by spaces.")
MISMATCH = _l("That is not the passphrase shown above. Please compare it word by word.")
EXPIRED = _l("That passphrase was never confirmed and has expired. Here is a new one.")
NO_ACCOUNT = _l("No account has this passphrase. Please check each word and try again.")
WRONG_CURRENT = _l("Your current passphrase was not right. Nothing has been changed.")
#: How long a refused confirmation waits before its answer. It costs a greenlet and no CPU,
#: and it paces a loop that makes accounts to one try per pause, so that the refusals
#: themselves cannot crowd out logins (``tests/bench/intake_flood.py``).
BUSY_PAUSE_SECONDS = 2.0

BUSY = _l(
    "Many accounts are being made right now, so yours has to wait a little. Please try"
    " again in a minute with this same form: your passphrase stays the same."
)


@bp.record_once
def prepare_account_creation(state: BlueprintSetupState) -> None:
    """Give account creation argon2 slots of its own and one rate for all visitors.

    Nothing is known about who makes an account (no IP address is kept, and through
    the onion there is none), so the only fair limit is a global one; its own slots
    mean that a flood of new accounts slows new accounts, never logins.
    """

    config = state.app.config
    s = config["SETTINGS"]
    config["CREATION_KEY_DERIVER"] = KeyDeriver(
        s.argon2,
        s.account_argon2_concurrency,
        s.argon2_wait_seconds,
        argon2_runner(CREATION_NICE),
        before_waiting=give_back_while_waiting,
    )
    config["CREATION_RATE"] = RateLimiter(s.accounts_per_minute, 60, clock=config["CLOCK"])


def creation_allowed() -> bool:
    """Count one account against the global rate; return whether it is within it."""
    rate: RateLimiter = current_app.config["CREATION_RATE"]
    return rate.allow(b"accounts")


def today() -> str:
    """Return today's date (UTC): the finest time we keep about a login."""
    return datetime.datetime.fromtimestamp(now(), datetime.UTC).date().isoformat()


def lookup_key() -> bytes:
    """Return the server key for account lookups."""
    key: bytes = current_app.config["LOOKUP_KEY"]
    return key


def log_in_browser(account: Unlocked, done: str | None) -> Response:
    """Start a new session for ``account`` and send the browser to its account page."""
    target = url_for("participant.account", done=done)
    return gate.log_in(account.participant_id, account.secret_key, target)


@bp.route("/create", methods=["GET", "POST"])
def create() -> Any:
    """Show a new passphrase once, and create the account when it is typed back."""
    if current_session() is not None:
        return redirect(url_for("participant.account"))
    error = None
    passphrase = None
    if request.method == "POST":
        passphrase = open_pending(request.form.get("pending", ""))
        if passphrase is None:
            error = EXPIRED
        else:
            try:
                typed = read_passphrase("confirm")
            except PassphraseInputError:
                error = UNREADABLE
            else:
                if typed == passphrase and not creation_allowed():
                    give_back_while_waiting()
                    gevent.sleep(BUSY_PAUSE_SECONDS)
                    return (
                        render_template(
                            "participant/create.html",
                            passphrase=passphrase,
                            pending=seal_pending(passphrase),
                            error=BUSY,
                        ),
                        503,
                        {"Retry-After": "60"},
                    )
                if typed == passphrase:
                    try:
                        account = create_account(
                            db(),
                            creation_deriver(),
                            lookup_key(),
                            passphrase,
                            today(),
                            DEFAULT_ZONE[current_language()],
                        )
                    except AccountExistsError:  # sent twice: the first one created it
                        account = unlock_account(
                            db(), creation_deriver(), lookup_key(), passphrase, today()
                        )
                    return log_in_browser(account, "created")
                error = MISMATCH
    if passphrase is None:
        passphrase = generate_passphrase(current_language())
    status = 400 if error else 200
    return render_template(
        "participant/create.html",
        passphrase=passphrase,
        pending=seal_pending(passphrase),
        error=error,
    ), status


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Log in with the passphrase alone."""
    if current_session() is not None:
        return redirect(url_for("participant.account"))
    error = None
    if request.method == "POST":
        try:
            typed = read_passphrase("passphrase")
            account = unlock_account(db(), deriver(), lookup_key(), typed, today())
        except PassphraseInputError:
            error = UNREADABLE
        except (UnknownPassphraseError, UnwrapError):
            error = NO_ACCOUNT
        else:
            return log_in_browser(account, None)
    status = {None: 200, NO_ACCOUNT: 401}.get(error, 400)
    return render_template("participant/login.html", error=error, notice=notice()), status


@bp.post("/logout")
def logout() -> Response:
    """End this session at once and forget the cookie."""
    return gate.log_out(url_for("participant.home", done="logged-out"))


@bp.get("/account")
@login_required
def account() -> Any:
    """The participant's own page: appointments, passphrase, deletion."""
    unfinished = intake_redirect()  # in a study: back to the step of intake they are at
    if unfinished is not None:
        return unfinished
    summary = course_summary()  # first: a waitlist that ended today crosses over here
    upcoming = upcoming_appointments(db(), current_participant_id(), now())
    refusal = may_book(db(), current_participant_id(), now(), settings(), study())
    return render_template(
        "participant/account.html",
        appointments=my_appointments(),
        course=summary,
        # A waitlist, or an arm without chat, is said in the course's part of the page.
        can_book=len(upcoming) < settings().max_upcoming_bookings
        and not isinstance(refusal, SessionsStoppedError | WaitlistError | NotInCourseError),
        books_from=books_from(refusal) if isinstance(refusal, AccountTooNewError) else None,
        notice=notice(),
        **study_values(),
    )


@bp.route("/account/passphrase", methods=["GET", "POST"])
@login_required
def change_passphrase() -> Any:
    """Replace the passphrase with a new generated one; every other session ends."""
    session = current_session()
    assert session is not None
    error = None
    passphrase = None
    if request.method == "POST":
        passphrase = open_pending(request.form.get("pending", ""))
        try:
            current = read_passphrase("current")
            typed = read_passphrase("confirm")
        except PassphraseInputError:
            error = UNREADABLE
        else:
            if passphrase is None:
                error = EXPIRED
            elif not passphrase_matches(db(), lookup_key(), session.owner_id, current):
                error = WRONG_CURRENT
            elif typed != passphrase:
                error = MISMATCH
            else:
                account = Unlocked(session.owner_id, session.secret_key)
                replace_passphrase(db(), deriver(), lookup_key(), account, passphrase)
                return gate.renew("participant.account", done="replaced")
    if passphrase is None:
        passphrase = generate_passphrase(current_language())
    return render_template(
        "participant/passphrase.html",
        passphrase=passphrase,
        pending=seal_pending(passphrase),
        error=error,
    ), (400 if error else 200)


@bp.route("/account/delete", methods=["GET", "POST"])
@login_required
def delete() -> Any:
    """Delete the account and everything in it, now, after one confirmation."""
    session = current_session()
    assert session is not None
    if request.method == "GET":
        return render_template("participant/delete.html")
    with_reserve(settings(), lambda: delete_account(db(), session.owner_id))
    response = make_response(redirect(url_for("participant.home", done="deleted")))
    return gate.clear_cookie(response)
