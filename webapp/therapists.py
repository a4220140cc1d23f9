"""Therapist accounts: added by the operator, enrolled by the therapist, password + TOTP.

The operator adds a therapist and hands over a one-time enrolment link and a
random login name. The login name is not the public name that participants see
next to each free time, so nobody who merely uses the service can pause a
therapist's account by failing to log in as them. The therapist sets a password
and a TOTP app at the link; the password's argon2id hash lets
them in, and a key derived from it wraps their X25519 secret key (DESIGN §4).
The TOTP secret is stored encrypted under a server key, and each code works once.
"""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyotp
from sqlite_utils import Database
from zxcvbn import zxcvbn

from stillroom.crypto.kdf import SALT_BYTES, KdfBusyError, KeyDeriver
from stillroom.crypto.keys import (
    UnwrapError,
    new_keypair,
    new_token,
    random_bytes,
    readable_code,
    token_hash,
    unwrap_key,
    wrap_key,
)
from stillroom.webapp.chat import delete_conversation
from stillroom.webapp.sessions import THERAPIST_SESSIONS, end_sessions_of
from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.store import checkpoint, transaction

#: How long an enrolment link works, in seconds.
ENROLMENT_SECONDS = 24 * 3600
MIN_PASSWORD_CHARS = 15
MAX_PASSWORD_CHARS = 128
MAX_NAME_CHARS = 40
#: Failed logins in a row before the account pauses, and for how long (seconds).
MAX_FAILURES = 5
PAUSE_SECONDS = 15 * 60
TOTP_STEP_SECONDS = 30


class TherapistError(Exception):
    """Base class of the therapist account errors."""


class TherapistNameError(TherapistError):
    """The name is empty, too long, holds control characters, or is taken."""


class UnknownTherapistError(TherapistError):
    """No therapist has this name."""


@dataclass(frozen=True)
class Enrolment:
    """What the operator passes on to a new therapist: the login name and the link's token."""

    login_name: str
    token: str


class EnrolmentError(TherapistError):
    """The enrolment link is unknown, used already or expired."""


class PasswordPolicyError(TherapistError):
    """The new password is too short, too long or too easy to guess.

    :param reason: ``"short"``, ``"long"`` or ``"guessable"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginError(TherapistError):
    """The name, password or code was wrong (the message never says which)."""


class LoginPausedError(TherapistError):
    """Too many failed logins: this account waits until ``until`` (a UTC timestamp)."""

    def __init__(self, until: int) -> None:
        super().__init__(until)
        self.until = until


@dataclass(frozen=True)
class Therapist:
    """What the portal and the operator see of a therapist."""

    id: str
    name: str
    login_name: str
    languages: tuple[str, ...]
    time_zone: str
    enrolled: bool
    disabled: bool


def clean_name(name: str) -> str:
    """Return the therapist's display name, normalised.

    :raises TherapistNameError: when it is empty, too long or not plain printable text.
    """
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise TherapistNameError(name)
    return name


def add_therapist(
    db: Database,
    name: str,
    languages: tuple[str, ...],
    time_zone: str,
    now: int,
    link_seconds: int = ENROLMENT_SECONDS,
) -> Enrolment:
    """Create a therapist who still has to enrol; return their login name and link token.

    :raises TherapistNameError: for a bad or taken name.
    """
    name = clean_name(name)
    if not languages or any(code not in LANGUAGES for code in languages):
        raise ValueError(f"languages must be among {', '.join(LANGUAGES)}")
    therapist_id = secrets.token_hex(16)
    login_name = readable_code().lower()
    with transaction(db):
        taken = db.execute("SELECT name FROM therapists").fetchall()
        if any(row[0].casefold() == name.casefold() for row in taken):
            raise TherapistNameError(name)
        db.table("therapists").insert(
            {
                "id": therapist_id,
                "name": name,
                "login_name": login_name,
                "languages": ",".join(languages),
                "time_zone": time_zone,
            }
        )
        return Enrolment(login_name, _issue_enrolment(db, therapist_id, now, link_seconds))


def _issue_enrolment(db: Database, therapist_id: str, now: int, link_seconds: int) -> str:
    token = new_token()
    db.execute("DELETE FROM enrolments WHERE therapist_id = ?", [therapist_id])
    db.table("enrolments").insert(
        {
            "token_hash": token_hash(token),
            "therapist_id": therapist_id,
            "expires_at": now + link_seconds,
        }
    )
    return token


def _therapist(row: Any) -> Therapist:
    therapist_id, name, login_name, languages, time_zone, password_hash, disabled = row
    return Therapist(
        id=str(therapist_id),
        name=str(name),
        login_name=str(login_name),
        languages=tuple(str(languages).split(",")),
        time_zone=str(time_zone),
        enrolled=password_hash is not None,
        disabled=bool(disabled),
    )


_COLUMNS = "id, name, login_name, languages, time_zone, password_hash, disabled"


def list_therapists(db: Database) -> list[Therapist]:
    """Return every therapist, by name."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM therapists ORDER BY name").fetchall()  # noqa: S608
    return [_therapist(row) for row in rows]


def get_therapist(db: Database, therapist_id: str) -> Therapist:
    """Return one therapist by id.

    :raises UnknownTherapistError: when there is none.
    """
    row = db.execute(
        f"SELECT {_COLUMNS} FROM therapists WHERE id = ?",  # noqa: S608
        [therapist_id],
    ).fetchone()
    if row is None:
        raise UnknownTherapistError(therapist_id)
    return _therapist(row)


def find_by_name(db: Database, name: str) -> Therapist:
    """Return the therapist called ``name`` (case does not matter).

    :raises UnknownTherapistError: when there is none.
    """
    try:
        wanted = clean_name(name).casefold()
    except TherapistNameError:
        raise UnknownTherapistError(name) from None
    for therapist in list_therapists(db):
        if therapist.name.casefold() == wanted:
            return therapist
    raise UnknownTherapistError(name)


def find_enrolment(db: Database, token: str, now: int) -> Therapist:
    """Return the therapist an enrolment link is for.

    :raises EnrolmentError: when the link is unknown, used or expired.
    """
    row = db.execute(
        "SELECT therapist_id FROM enrolments WHERE token_hash = ? AND expires_at > ?",
        [token_hash(token), now],
    ).fetchone()
    if row is None:
        raise EnrolmentError
    return get_therapist(db, row[0])


def check_password_policy(password: str) -> None:
    """Refuse passwords that are short, overlong, common or otherwise easy to guess.

    zxcvbn checks against its lists of common passwords, words and names and
    estimates how many guesses the password would take.

    :raises PasswordPolicyError: naming the reason.
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordPolicyError("short")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordPolicyError("long")
    if zxcvbn(password, max_length=MAX_PASSWORD_CHARS)["score"] < 3:
        raise PasswordPolicyError("guessable")


def new_totp_secret() -> str:
    """Return a fresh base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(32)


def totp_uri(secret: str, name: str, issuer: str) -> str:
    """Return the ``otpauth://`` URI that authenticator apps read."""
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)


def totp_step(secret: str, code: str, now: int, after: int = 0) -> int | None:
    """Return the time step that ``code`` belongs to, or ``None`` if it fits none.

    The current step and one on either side are accepted (clocks drift), but only
    steps later than ``after``: a code that was used once never works again.
    """
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = now // TOTP_STEP_SECONDS
    for step in (current - 1, current, current + 1):
        if step > after and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def enrol(
    db: Database,
    deriver: KeyDeriver,
    totp_key: bytes,
    token: str,
    password: str,
    totp_secret: str,
    code: str,
    now: int,
) -> tuple[str, bytes]:
    """Finish enrolment: set the password and TOTP, and make the therapist's key pair.

    The link works once; a second submission fails with :class:`EnrolmentError`.

    :returns: the therapist's id and open secret key.
    :raises EnrolmentError: when the link is unknown, used or expired.
    :raises PasswordPolicyError: for a weak password.
    :raises LoginError: when the TOTP code does not fit the new secret.
    """
    therapist = find_enrolment(db, token, now)
    check_password_policy(password)
    step = totp_step(totp_secret, code, now)
    if step is None:
        raise LoginError
    public_key, secret_key = new_keypair()
    salt = random_bytes(SALT_BYTES)
    wrapped = wrap_key(secret_key, deriver.derive(password.encode(), salt))
    password_hash = deriver.hash_password(password)
    with transaction(db):
        used = db.execute(
            "DELETE FROM enrolments WHERE token_hash = ? AND expires_at > ?",
            [token_hash(token), now],
        )
        if used.rowcount != 1:
            raise EnrolmentError
        db.execute(
            "UPDATE therapists SET password_hash = ?, kdf_salt = ?, public_key = ?,"
            " wrapped_secret_key = ?, totp_secret = ?, totp_last_step = ?,"
            " failed_logins = 0, locked_until = 0, disabled = 0 WHERE id = ?",
            [
                password_hash,
                salt,
                public_key,
                wrapped,
                wrap_key(totp_secret.encode(), totp_key),
                step,
                therapist.id,
            ],
        )
        end_sessions_of(db, THERAPIST_SESSIONS, therapist.id)
    return therapist.id, secret_key


def log_in(
    db: Database,
    deriver: KeyDeriver,
    totp_key: bytes,
    login_name: str,
    password: str,
    code: str,
    now: int,
    pause_seconds: int = PAUSE_SECONDS,
) -> tuple[str, bytes]:
    """Check login name, password and a fresh TOTP code; return the id and open secret key.

    The attempt is claimed before any password is checked (see :func:`_claim_attempt`),
    so neither parallel guesses nor a saturated server can get around the limit.

    :raises LoginError: for any wrong part, a disabled or unenrolled account.
    :raises LoginPausedError: while the account is paused.
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated (not counted).
    """
    wanted = " ".join(login_name.split()).lower()
    row = db.execute(
        "SELECT id, password_hash, kdf_salt, wrapped_secret_key, totp_secret, totp_last_step"
        " FROM therapists WHERE login_name = ? AND disabled = 0 AND password_hash IS NOT NULL"
        " AND totp_secret IS NOT NULL",
        [wanted],
    ).fetchone()
    if row is None:
        raise LoginError
    therapist_id, password_hash, salt, wrapped, sealed_totp, last_step = row
    with _attempt(db, therapist_id, now, pause_seconds):
        if len(password) > MAX_PASSWORD_CHARS:
            raise LoginError
        if not deriver.verify_password(password_hash, password):
            raise LoginError
        step = totp_step(unwrap_key(sealed_totp, totp_key).decode(), code, now, after=last_step)
        if step is None:
            raise LoginError
        secret_key = _open_secret_key(deriver, wrapped, password, salt)
        with transaction(db):
            # Single use even when two logins race; and still the account it was a moment ago.
            used = db.execute(
                "UPDATE therapists SET totp_last_step = ?, failed_logins = 0"
                " WHERE id = ? AND totp_last_step < ? AND password_hash = ? AND disabled = 0",
                [step, therapist_id, step, password_hash],
            )
        if used.rowcount != 1:
            raise LoginError
    _rehash_if_needed(db, deriver, therapist_id, password_hash, password)
    return therapist_id, secret_key


@contextmanager
def _attempt(db: Database, therapist_id: str, now: int, pause_seconds: int) -> Iterator[None]:
    """Claim one login attempt for the block; a busy server gives the claim back.

    Claiming happens in one write transaction before any password is checked: the
    first :data:`MAX_FAILURES` claims since the last success go ahead, the next one
    pauses the account for ``pause_seconds``. A block that ends in
    :class:`KdfBusyError` tried nothing, so its claim is returned; a successful
    login resets the count itself.

    :raises LoginPausedError: while paused, or when this claim starts the pause.
    """
    with transaction(db):
        locked, failures = db.execute(
            "SELECT locked_until, failed_logins FROM therapists WHERE id = ?", [therapist_id]
        ).fetchone()
        if locked > now:
            raise LoginPausedError(locked)
        if failures >= MAX_FAILURES:
            db.execute(
                "UPDATE therapists SET failed_logins = 0, locked_until = ? WHERE id = ?",
                [now + pause_seconds, therapist_id],
            )
        else:
            db.execute(
                "UPDATE therapists SET failed_logins = failed_logins + 1,"
                " failures_expire_at = ? WHERE id = ?",
                [now + pause_seconds, therapist_id],
            )
    if failures >= MAX_FAILURES:
        raise LoginPausedError(now + pause_seconds)
    try:
        yield
    except KdfBusyError:
        with transaction(db):
            db.execute(
                "UPDATE therapists SET failed_logins = max(failed_logins - 1, 0) WHERE id = ?",
                [therapist_id],
            )
        raise


def _open_secret_key(deriver: KeyDeriver, wrapped: bytes, password: str, salt: bytes) -> bytes:
    try:
        return unwrap_key(wrapped, deriver.derive(password.encode(), salt))
    except UnwrapError:  # the hash and the wrapped key disagree: never expected
        raise LoginError from None


def _rehash_if_needed(
    db: Database, deriver: KeyDeriver, therapist_id: str, password_hash: str, password: str
) -> None:
    """Re-hash a password made with older costs; best effort, a busy server skips it."""
    if not deriver.needs_rehash(password_hash):
        return
    try:
        new_hash = deriver.hash_password(password)
    except KdfBusyError:
        return  # the next login tries again
    with transaction(db):
        db.execute(
            "UPDATE therapists SET password_hash = ? WHERE id = ? AND password_hash = ?",
            [new_hash, therapist_id, password_hash],
        )


def change_password(
    db: Database,
    deriver: KeyDeriver,
    therapist_id: str,
    secret_key: bytes,
    current: str,
    new: str,
    now: int,
    pause_seconds: int = PAUSE_SECONDS,
) -> None:
    """Replace the password and re-wrap the secret key; every session ends.

    A wrong current password counts against the same limit as a failed login.

    :raises LoginError: when ``current`` is wrong, or the account changed meanwhile.
    :raises LoginPausedError: while the account is paused.
    :raises PasswordPolicyError: for a weak new password.
    """
    (password_hash,) = db.execute(
        "SELECT password_hash FROM therapists WHERE id = ?", [therapist_id]
    ).fetchone()
    with _attempt(db, therapist_id, now, pause_seconds):
        if len(current) > MAX_PASSWORD_CHARS or password_hash is None:
            raise LoginError
        if not deriver.verify_password(password_hash, current):
            raise LoginError
        with transaction(db):
            db.execute("UPDATE therapists SET failed_logins = 0 WHERE id = ?", [therapist_id])
    check_password_policy(new)
    salt = random_bytes(SALT_BYTES)
    wrapped = wrap_key(secret_key, deriver.derive(new.encode(), salt))
    new_hash = deriver.hash_password(new)
    with transaction(db):
        changed = db.execute(
            "UPDATE therapists SET password_hash = ?, kdf_salt = ?, wrapped_secret_key = ?"
            " WHERE id = ? AND password_hash = ? AND disabled = 0",
            [new_hash, salt, wrapped, therapist_id, password_hash],
        )
        if changed.rowcount != 1:  # disabled or reset by the operator meanwhile
            raise LoginError
        end_sessions_of(db, THERAPIST_SESSIONS, therapist_id)
    checkpoint(db)  # the old wrapping must not linger in the write-ahead log


def _withdraw_free_slots(db: Database, therapist_id: str, now: int) -> None:
    """Delete the therapist's future slots that nobody has booked (inside a transaction)."""
    db.execute(
        "DELETE FROM slots WHERE therapist_id = ? AND starts_at > ?"
        " AND id NOT IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
        [therapist_id, now],
    )


def disable_therapist(db: Database, name: str, now: int) -> int:
    """Lock a therapist out: end their sessions, withdraw their free future slots.

    Booked appointments stay, so the operator can arrange them with the participants.

    :returns: how many booked, upcoming appointments the therapist still has.
    :raises UnknownTherapistError: when no therapist has this name.
    """
    therapist = find_by_name(db, name)
    with transaction(db):
        db.execute("UPDATE therapists SET disabled = 1 WHERE id = ?", [therapist.id])
        db.execute("DELETE FROM enrolments WHERE therapist_id = ?", [therapist.id])
        end_sessions_of(db, THERAPIST_SESSIONS, therapist.id)
        _withdraw_free_slots(db, therapist.id, now)
        (upcoming,) = db.execute(
            "SELECT count(*) FROM appointments WHERE therapist_id = ? AND ends_at > ?"
            " AND cancelled = 0",
            [therapist.id, now],
        ).fetchone()
    checkpoint(db)  # the ended sessions held the therapist's wrapped key
    return int(upcoming)


def forget_old_failures(db: Database, now: int) -> int:
    """Clear the failed-login counts and pauses that have run out; return how many.

    A count is kept a pause's length after the last attempt, which bounds guessing
    as the pause does (five tries per pause), and is then forgotten.
    """
    with transaction(db):
        return int(
            db.execute(
                "UPDATE therapists SET failed_logins = 0, locked_until = 0, failures_expire_at = 0"
                " WHERE failures_expire_at <= ? AND locked_until <= ?"
                " AND (failed_logins > 0 OR locked_until > 0 OR failures_expire_at > 0)",
                [now, now],
            ).rowcount
        )


def reset_therapist(
    db: Database, name: str, now: int, link_seconds: int = ENROLMENT_SECONDS
) -> Enrolment:
    """Clear password and TOTP and issue a new enrolment link (which also re-enables).

    The old key pair cannot be opened without the old password, so enrolment makes
    a new one. The login name stays. Free times are withdrawn: nobody should book a
    therapist who cannot log in yet. The therapist's conversations are deleted, their
    keys first: they were sealed to the old key pair, so the therapist could never read
    them again, and nothing should reopen them for whoever enrols next. A pair that
    meets again starts a new conversation under both current keys.

    :returns: the login name and the new enrolment token.
    :raises UnknownTherapistError: when no therapist has this name.
    """
    therapist = find_by_name(db, name)
    with transaction(db):
        db.execute(
            "UPDATE therapists SET password_hash = NULL, kdf_salt = NULL, public_key = NULL,"
            " wrapped_secret_key = NULL, totp_secret = NULL, totp_last_step = 0,"
            " failed_logins = 0, locked_until = 0, disabled = 0 WHERE id = ?",
            [therapist.id],
        )
        end_sessions_of(db, THERAPIST_SESSIONS, therapist.id)
        _withdraw_free_slots(db, therapist.id, now)
        db.execute(
            "UPDATE conversations SET key_for_therapist = NULL WHERE therapist_id = ?",
            [therapist.id],
        )
        token = _issue_enrolment(db, therapist.id, now, link_seconds)
    ended = db.execute("SELECT id FROM conversations WHERE therapist_id = ?", [therapist.id])
    for (conversation_id,) in ended.fetchall():
        delete_conversation(db, conversation_id)
    checkpoint(db)
    return Enrolment(therapist.login_name, token)
