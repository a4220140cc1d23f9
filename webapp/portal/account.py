"""Therapist accounts in the portal: enrol, log in, log out, take a new passphrase.

Therapists never choose the secret that guards their key: the server generates a
passphrase (as participants get) at enrolment and at every change, shows it once,
and asks for it back (DESIGN §9).
"""

from __future__ import annotations

from typing import Any

import segno
from flask import abort, current_app, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.crypto.passphrase import PassphraseInputError, generate_passphrase
from stillroom.webapp.gate import (
    current_session,
    db,
    deriver,
    now,
    open_form_value,
    read_passphrase,
    seal_form_value,
    settings,
)
from stillroom.webapp.portal.blueprint import (
    ENROL_FORM_MINUTES,
    bp,
    current_therapist,
    gate,
    login_required,
    totp_key,
)
from stillroom.webapp.portal.pages import NOTICES, notice
from stillroom.webapp.therapists import (
    EnrolmentError,
    LoginError,
    LoginPausedError,
    LoginThrottle,
    PassphraseNotGeneratedError,
    Therapist,
    change_passphrase,
    enrol,
    find_enrolment,
    log_in,
    new_totp_secret,
    passphrase_language,
    totp_uri,
)

WRONG_LOGIN = _l("The login name, passphrase or code was not right. Please try again.")
BAD_CODE = _l(
    "That code did not fit. Check that your authenticator app's clock is right,"
    " then type the code it shows now."
)
MISMATCH = _l("That is not the passphrase shown above. Please compare it word by word.")
UNREADABLE = _l("This passphrase could not be read. Type only the words, separated by spaces.")
EXPIRED = _l("This page was open too long. Here is a new passphrase; nothing has been changed.")
WRONG_CURRENT = _l("Your current passphrase was not right. Nothing has been changed.")


def paused() -> str:
    """Say that logging in is paused, and for how long (``LOGIN_PAUSE_MINUTES``)."""
    text: str = _(
        "There were too many attempts in a row, so logging in to this account is paused"
        " for %(minutes)s minutes. Please try again later.",
        minutes=settings().login_pause_minutes,
    )
    return text


def throttle() -> LoginThrottle:
    """Return the portal's limit on failed logins (names that exist nowhere included)."""
    value: LoginThrottle = current_app.config["LOGIN_THROTTLE"]
    return value


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Log in with login name, passphrase and the current TOTP code."""
    if current_session() is not None:
        return redirect(url_for("portal.home"))
    error = None
    status = 200
    if request.method == "POST":
        try:
            done = log_in(
                db(),
                deriver(),
                totp_key(),
                request.form.get("name", "")[:200],
                request.form.get("passphrase", ""),
                request.form.get("code", "")[:20],
                now(),
                throttle(),
            )
        except LoginPausedError:
            error, status = paused(), 429
        except LoginError:
            error, status = WRONG_LOGIN, 401
        else:
            target = url_for("portal.passphrase", done="renew") if done.renew else None
            return gate.log_in(done.therapist_id, done.secret_key, target or url_for("portal.home"))
    return render_template(
        "portal/login.html",
        # A failed try keeps the login name (never the passphrase or the code).
        name=request.form.get("name", "")[:40],
        error=error,
        notice=notice(),
        pause_minutes=settings().login_pause_minutes,
    ), status


@bp.post("/logout")
def logout() -> Response:
    """End this session at once and forget the cookie."""
    return gate.log_out(url_for("portal.login", done="logged-out"))


def seal_pending(*values: str) -> str:
    """Carry what a page showed (a passphrase, a TOTP secret) to its form, never stored."""
    return seal_form_value("\n".join(values))


def open_pending(count: int) -> list[str] | None:
    """Return the ``count`` values :func:`seal_pending` carried, or ``None`` when the page was
    open too long (or the value came from another page's form)."""
    value = open_form_value(request.form.get("pending", ""), ENROL_FORM_MINUTES)
    values = None if value is None else value.split("\n")
    return values if values is not None and len(values) == count else None


def typed_back(passphrase: str) -> Any:
    """Return ``None`` when the passphrase was typed back right, else what to say."""
    try:
        return None if read_passphrase("confirm") == passphrase else MISMATCH
    except PassphraseInputError:
        return UNREADABLE


@bp.route("/enrol/<token>", methods=["GET", "POST"])
def enrolment(token: str) -> Any:
    """Take the generated passphrase and set up a TOTP app, once, through the operator's link."""
    try:
        therapist = find_enrolment(db(), token, now())
    except EnrolmentError:
        abort(404)
    error = None
    pending = open_pending(2) if request.method == "POST" else None
    if request.method == "POST" and pending is None:
        error = BAD_CODE  # the page was open too long: a new secret and passphrase follow
    elif pending is not None:
        secret, passphrase = pending
        error = typed_back(passphrase)
        if error is None:
            try:
                therapist_id, secret_key = enrol(
                    db(),
                    deriver(),
                    token,
                    passphrase,
                    secret,
                    request.form.get("code", "")[:20],
                    now(),
                )
            except (EnrolmentError, PassphraseNotGeneratedError):
                abort(404)
            except LoginError:
                error = BAD_CODE
            else:
                return gate.log_in(
                    therapist_id, secret_key, url_for("portal.home", done="enrolled")
                )
    if pending is None:
        pending = [new_totp_secret(), new_passphrase(therapist)]
    secret, passphrase = pending
    uri = totp_uri(secret, therapist.name, "Stillroom")
    return render_template(
        "portal/enrol.html",
        therapist=therapist,
        secret=" ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        uri=uri,
        qr_svg=segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff"),
        passphrase=passphrase,
        pending=seal_pending(secret, passphrase),
        error=error,
    ), (400 if error else 200)


def new_passphrase(therapist: Therapist) -> str:
    """Generate a passphrase from the word list of the therapist's first language."""
    return generate_passphrase(passphrase_language(therapist))


@bp.route("/passphrase", methods=["GET", "POST"])
@login_required
def passphrase() -> Any:
    """Take a new generated passphrase; the key is wrapped again and other sessions end.

    A therapist who still has a chosen password lands here after logging in with it,
    and can do nothing else until the passphrase replaces it.
    """
    session = current_session()
    assert session is not None
    therapist = current_therapist()
    error = None
    pending = open_pending(1) if request.method == "POST" else None
    if request.method == "POST" and pending is None:
        error = EXPIRED
    elif pending is not None:
        (new,) = pending
        error = typed_back(new)
        if error is None:
            try:
                change_passphrase(
                    db(),
                    deriver(),
                    totp_key(),
                    session.owner_id,
                    request.form.get("current", ""),
                    new,
                    now(),
                    throttle(),
                )
            except LoginPausedError:
                error = paused()
            except LoginError:
                error = WRONG_CURRENT
            except PassphraseNotGeneratedError:
                abort(400)
            else:
                return gate.renew("portal.home", done="passphrase-changed")
    new = pending[0] if pending else new_passphrase(therapist)
    return render_template(
        "portal/passphrase.html",
        therapist=therapist,
        passphrase=new,
        pending=seal_pending(new),
        error=error,
        # Why they are here stays said while the old password is still in use.
        notice=NOTICES["renew"] if therapist.renew else notice(),
    ), (400 if error else 200)
