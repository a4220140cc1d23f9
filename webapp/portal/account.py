"""Therapist accounts in the portal: enrol, log in, log out, change the password."""

from __future__ import annotations

from typing import Any

import segno
from flask import abort, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from werkzeug.wrappers import Response

from stillroom.webapp.gate import (
    current_session,
    db,
    deriver,
    now,
    open_form_value,
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
from stillroom.webapp.portal.pages import notice
from stillroom.webapp.therapists import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    EnrolmentError,
    LoginError,
    LoginPausedError,
    PasswordPolicyError,
    change_password,
    enrol,
    find_enrolment,
    log_in,
    new_totp_secret,
    totp_uri,
)

WRONG_LOGIN = _l("The login name, password or code was not right. Please try again.")


def paused() -> str:
    """Say that the account is paused, and for how long (``LOGIN_PAUSE_MINUTES``)."""
    text: str = _(
        "There were too many attempts in a row, so logging in to this account is paused"
        " for %(minutes)s minutes. Please try again later.",
        minutes=settings().login_pause_minutes,
    )
    return text


def pause_seconds() -> int:
    """Return how long failed logins pause an account, from the settings."""
    return settings().login_pause_minutes * 60


BAD_CODE = _l(
    "That code did not fit. Check that your authenticator app's clock is right,"
    " then type the code it shows now."
)
MISMATCH = _l("The two new passwords are not the same.")
WRONG_CURRENT = _l("Your current password was not right. Nothing has been changed.")
POLICY = {
    "short": _l("The password must have at least %(count)s characters.", count=MIN_PASSWORD_CHARS),
    "long": _l("The password may have at most %(count)s characters.", count=MAX_PASSWORD_CHARS),
    "guessable": _l(
        "This password is too common or too easy to guess. Several unrelated words make a"
        " strong one."
    ),
}


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Log in with name, password and the current TOTP code."""
    if current_session() is not None:
        return redirect(url_for("portal.home"))
    error = None
    status = 200
    if request.method == "POST":
        try:
            therapist_id, secret_key = log_in(
                db(),
                deriver(),
                totp_key(),
                request.form.get("name", "")[:200],
                request.form.get("password", ""),
                request.form.get("code", "")[:20],
                now(),
                pause_seconds(),
            )
        except LoginPausedError:
            error, status = paused(), 429
        except LoginError:
            error, status = WRONG_LOGIN, 401
        else:
            return gate.log_in(therapist_id, secret_key, url_for("portal.home"))
    return render_template("portal/login.html", error=error, notice=notice()), status


@bp.post("/logout")
def logout() -> Response:
    """End this session at once and forget the cookie."""
    return gate.log_out(url_for("portal.login", done="logged-out"))


@bp.route("/enrol/<token>", methods=["GET", "POST"])
def enrolment(token: str) -> Any:
    """Set a password and a TOTP app, once, through the operator's link."""
    try:
        therapist = find_enrolment(db(), token, now())
    except EnrolmentError:
        abort(404)
    error = None
    secret = None
    if request.method == "POST":
        secret = open_form_value(request.form.get("pending", ""), ENROL_FORM_MINUTES)
        password = request.form.get("password", "")
        if secret is None:
            error = BAD_CODE  # the page was open too long: a new secret follows
        elif password != request.form.get("again", ""):
            error = MISMATCH
        else:
            try:
                therapist_id, secret_key = enrol(
                    db(),
                    deriver(),
                    totp_key(),
                    token,
                    password,
                    secret,
                    request.form.get("code", "")[:20],
                    now(),
                )
            except EnrolmentError:
                abort(404)
            except PasswordPolicyError as policy:
                error = POLICY[policy.reason]
            except LoginError:
                error = BAD_CODE
            else:
                return gate.log_in(
                    therapist_id, secret_key, url_for("portal.home", done="enrolled")
                )
    if secret is None:
        secret = new_totp_secret()
    uri = totp_uri(secret, therapist.name, "Stillroom")
    return render_template(
        "portal/enrol.html",
        therapist=therapist,
        secret=" ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        uri=uri,
        qr_svg=segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff"),
        pending=seal_form_value(secret),
        min_chars=MIN_PASSWORD_CHARS,
        error=error,
    ), (400 if error else 200)


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password() -> Any:
    """Change the password; the secret key is re-wrapped and other sessions end."""
    session = current_session()
    assert session is not None
    error = None
    if request.method == "POST":
        new = request.form.get("password", "")
        if new != request.form.get("again", ""):
            error = MISMATCH
        else:
            try:
                change_password(
                    db(),
                    deriver(),
                    session.owner_id,
                    session.secret_key,
                    request.form.get("current", ""),
                    new,
                    now(),
                    pause_seconds(),
                )
            except LoginPausedError:
                error = paused()
            except LoginError:
                error = WRONG_CURRENT
            except PasswordPolicyError as policy:
                error = POLICY[policy.reason]
            else:
                return gate.renew("portal.home", done="password-changed")
    return render_template(
        "portal/password.html",
        therapist=current_therapist(),
        min_chars=MIN_PASSWORD_CHARS,
        error=error,
    ), (400 if error else 200)
