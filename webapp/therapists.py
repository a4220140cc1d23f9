"""Therapist accounts: added by the operator, enrolled by the therapist, passphrase + TOTP.

The operator adds a therapist and hands over a one-time enrolment link and a
random login name. The login name is not the public name that participants see
next to each free time, so nobody who merely uses the service can pause a
therapist's account by failing to log in as them.

At the link, the therapist gets a passphrase that the server generates (seven or
more diceware words, at least 90 bits, as participants get) and sets up a TOTP app.
Nobody's chosen password guards a key to messages (DESIGN §9): the therapist's
X25519 secret key and TOTP secret are wrapped together under an argon2id key of the
passphrase, and locked under the therapist's key slot as well, which a new
passphrase or a reset destroys. Therapists enrolled before this chose a password;
it works once more, for the page that gives them a passphrase (``renew_passphrase``).
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import confusables
import pyotp
from sqlite_utils import Database

from stillroom.crypto.kdf import (
    SALT_BYTES,
    KdfBusyError,
    KeyDeriver,
    unwrap_with_passphrase,
    wrap_with_passphrase,
)
from stillroom.crypto.keys import (
    KEY_BYTES,
    UnwrapError,
    keyed_hash,
    new_keypair,
    new_token,
    random_bytes,
    readable_code,
    token_hash,
    unwrap_key,
)
from stillroom.crypto.passphrase import (
    MAX_INPUT_CHARS,
    PassphraseInputError,
    is_generated,
    normalise_passphrase,
)
from stillroom.webapp.chat import conversation_slots
from stillroom.webapp.keyslots import (
    SlotGoneError,
    destroy_slots,
    doomed,
    lock,
    new_slot,
    unlock,
)
from stillroom.webapp.notes import note_slots
from stillroom.webapp.sessions import THERAPIST_SESSIONS, end_sessions_of
from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.store import checkpoint, transaction

#: How long an enrolment link works, in seconds.
ENROLMENT_SECONDS = 24 * 3600
MAX_NAME_CHARS = 40
#: A site's name: what the operator and a study definition call a trial's centre.
SITE_PATTERN = re.compile(r"[a-z0-9-]{2,30}\Z")
#: Failed logins in a row before the account pauses, and for how long (seconds).
MAX_FAILURES = 5
PAUSE_SECONDS = 15 * 60
TOTP_STEP_SECONDS = 30
#: The roles of portal accounts: a researcher shares the enrolment and login of therapists,
#: but sees only the study's research pages and is never offered to participants.
THERAPIST = "therapist"
RESEARCHER = "researcher"


class TherapistError(Exception):
    """Base class of the therapist account errors."""


class TherapistNameError(TherapistError):
    """The name cannot be used.

    :param reason: ``"invalid"`` (empty, too long, not plain text), ``"taken"``, or
        ``"look-alike"`` (it looks the same as ``existing``: other letters that are
        drawn alike, fullwidth forms, accents).
    """

    def __init__(self, reason: str, existing: str = "") -> None:
        super().__init__(reason, existing)
        self.reason = reason
        self.existing = existing


class UnknownTherapistError(TherapistError):
    """No therapist has this name."""


class NoSiteError(TherapistError):
    """Only a therapist who belongs to a site can lead it."""


class SiteNameError(TherapistError):
    """A site's name must be 2 to 30 of a-z, 0-9 and "-"."""


@dataclass(frozen=True)
class Enrolment:
    """What the operator passes on to a new therapist: the login name and the link's token."""

    login_name: str
    token: str


class EnrolmentError(TherapistError):
    """The enrolment link is unknown, used already or expired."""


class PassphraseNotGeneratedError(TherapistError):
    """A new passphrase was not one the server generated: only those guard keys."""


class LoginError(TherapistError):
    """The name, passphrase or code was wrong (the message never says which)."""


class LoginPausedError(TherapistError):
    """Too many failed logins: this login name waits until ``until`` (a UTC timestamp)."""

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
    #: Enrolled with a chosen password: must take a generated passphrase now.
    renew: bool = False
    #: The site (a trial's centre) the therapist belongs to, if any.
    site: str | None = None
    #: :data:`THERAPIST` or :data:`RESEARCHER`.
    role: str = THERAPIST
    #: Leads their site: sees its safety flags of participants without a therapist.
    lead: bool = False


@dataclass(frozen=True)
class LoggedIn:
    """A therapist whose secret key is open for this request."""

    therapist_id: str
    secret_key: bytes
    #: Logged in with a chosen password that must now give way to a passphrase.
    renew: bool


def clean_name(name: str) -> str:
    """Return the therapist's display name, NFKC-normalised with single spaces.

    NFKC folds fullwidth letters, ligatures and other compatibility forms into
    ordinary ones, so a name cannot pass for another by its code points alone.

    :raises TherapistNameError: when it is empty, too long or not plain printable text.
    """
    name = " ".join(unicodedata.normalize("NFKC", name).split())
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise TherapistNameError("invalid")
    return name


def _refuse_taken(db: Database, name: str) -> None:
    """Refuse a name that is taken, or that looks the same as one that is (homoglyphs)."""
    for (existing,) in db.execute("SELECT name FROM therapists").fetchall():
        if existing.casefold() == name.casefold():
            raise TherapistNameError("taken", existing)
        if confusables.is_confusable(existing.casefold(), name.casefold()):
            raise TherapistNameError("look-alike", existing)


def check_site(site: str) -> str:
    """Return ``site`` if it is a valid site name.

    :raises SiteNameError: when it is not 2 to 30 of a-z, 0-9 and "-".
    """
    if not SITE_PATTERN.match(site):
        raise SiteNameError(site)
    return site


def add_therapist(
    db: Database,
    name: str,
    languages: tuple[str, ...],
    time_zone: str,
    now: int,
    link_seconds: int = ENROLMENT_SECONDS,
    site: str | None = None,
    role: str = THERAPIST,
) -> Enrolment:
    """Create a therapist (or a researcher) who still has to enrol; return their login
    name and link token.

    :raises TherapistNameError: for a bad or taken name, or one that looks like another.
    :raises SiteNameError: for a site name that is not valid.
    """
    name = clean_name(name)
    if site is not None:
        check_site(site)
    if not languages or any(code not in LANGUAGES for code in languages):
        raise ValueError(f"languages must be among {', '.join(LANGUAGES)}")
    therapist_id = secrets.token_hex(16)
    login_name = readable_code().lower()
    with transaction(db):
        _refuse_taken(db, name)
        db.table("therapists").insert(
            {
                "id": therapist_id,
                "name": name,
                "login_name": login_name,
                "languages": ",".join(languages),
                "time_zone": time_zone,
                "site": site,
                "role": role,
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
    (therapist_id, name, login_name, languages, time_zone, slot, disabled, renew, site) = row[:9]
    role, lead = row[9:]
    return Therapist(
        id=str(therapist_id),
        name=str(name),
        login_name=str(login_name),
        languages=tuple(str(languages).split(",")),
        time_zone=str(time_zone),
        enrolled=slot is not None,
        disabled=bool(disabled),
        renew=bool(renew),
        site=None if site is None else str(site),
        role=str(role),
        lead=bool(lead) and site is not None,
    )


_COLUMNS = (
    "id, name, login_name, languages, time_zone, slot, disabled, renew_passphrase, site, role,"
    " site_lead"
)


def list_therapists(db: Database, role: str = THERAPIST) -> list[Therapist]:
    """Return every therapist (or every researcher), by name."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM therapists WHERE role = ? ORDER BY name",  # noqa: S608
        [role],
    ).fetchall()
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


def find_by_name(db: Database, name: str, role: str = THERAPIST) -> Therapist:
    """Return the therapist (or researcher, by ``role``) called ``name`` (case does not matter).

    :raises UnknownTherapistError: when there is none.
    """
    try:
        wanted = clean_name(name).casefold()
    except TherapistNameError:
        raise UnknownTherapistError(name) from None
    for therapist in list_therapists(db, role):
        if therapist.name.casefold() == wanted:
            return therapist
    raise UnknownTherapistError(name)


def set_site(db: Database, name: str, site: str | None) -> Therapist:
    """Move the therapist called ``name`` to ``site`` (``None``: to no site); return them.

    Appointments already booked stay as they are; only where they can be booked next
    follows the new site. A lead of the old site leads no site after a move: leading
    another one is the operator's decision (:func:`set_lead`).

    :raises UnknownTherapistError: when no therapist has this name.
    :raises SiteNameError: for a site name that is not valid.
    """
    if site is not None:
        check_site(site)
    therapist = find_by_name(db, name)
    with transaction(db):
        db.execute(
            "UPDATE therapists SET site_lead = site_lead AND site IS ?, site = ? WHERE id = ?",
            [site, site, therapist.id],
        )
    return get_therapist(db, therapist.id)


def set_lead(db: Database, name: str, lead: bool) -> Therapist:
    """Make the therapist called ``name`` a lead of their site, or no longer; return them.

    A site may have several leads. A lead sees the site's safety flags of study
    participants who have no therapist yet.

    :raises UnknownTherapistError: when no therapist has this name.
    :raises NoSiteError: when making a lead of a therapist who belongs to no site.
    """
    therapist = find_by_name(db, name)
    if lead and therapist.site is None:
        raise NoSiteError(name)
    with transaction(db):
        db.execute("UPDATE therapists SET site_lead = ? WHERE id = ?", [int(lead), therapist.id])
    return get_therapist(db, therapist.id)


def therapists_at(db: Database, language: str, site: str) -> list[Therapist]:
    """Return the therapists a participant of ``language`` at ``site`` can book: enrolled,
    not disabled, working in that language and belonging to that site."""
    return [
        therapist
        for therapist in list_therapists(db)
        if therapist.site == site
        and language in therapist.languages
        and therapist.enrolled
        and not therapist.disabled
    ]


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


def passphrase_language(therapist: Therapist) -> str:
    """Return the language whose word list makes this therapist's passphrases: their first."""
    return therapist.languages[0]


def _require_generated(passphrase: str, therapist: Therapist) -> None:
    if not is_generated(passphrase, passphrase_language(therapist)):
        raise PassphraseNotGeneratedError


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


def _payload(secret_key: bytes, totp_secret: str) -> bytes:
    """What a therapist's passphrase wraps: the secret key and the TOTP secret together."""
    return secret_key + totp_secret.encode()


def enrol(
    db: Database,
    deriver: KeyDeriver,
    token: str,
    passphrase: str,
    totp_secret: str,
    code: str,
    now: int,
) -> tuple[str, bytes]:
    """Finish enrolment: set the passphrase and TOTP, and make the therapist's key pair.

    The link works once; a second submission fails with :class:`EnrolmentError`.

    :param passphrase: the generated passphrase, normalised, as the therapist typed it back.
    :returns: the therapist's id and open secret key.
    :raises EnrolmentError: when the link is unknown, used or expired.
    :raises PassphraseNotGeneratedError: for a passphrase the server did not make.
    :raises LoginError: when the TOTP code does not fit the new secret.
    """
    therapist = find_enrolment(db, token, now)
    _require_generated(passphrase, therapist)
    step = totp_step(totp_secret, code, now)
    if step is None:
        raise LoginError
    public_key, secret_key = new_keypair()
    wrapped = wrap_with_passphrase(deriver, _payload(secret_key, totp_secret), passphrase)
    with transaction(db):
        used = db.execute(
            "DELETE FROM enrolments WHERE token_hash = ? AND expires_at > ?",
            [token_hash(token), now],
        )
        if used.rowcount != 1:
            raise EnrolmentError
        (old,) = db.execute("SELECT slot FROM therapists WHERE id = ?", [therapist.id]).fetchone()
        slot = new_slot(db)
        db.execute(
            "UPDATE therapists SET slot = ?, public_key = ?, wrapped_secret_key = ?,"
            " totp_secret = NULL, totp_last_step = ?, renew_passphrase = 0,"
            " failed_logins = 0, locked_until = 0, disabled = 0 WHERE id = ?",
            [slot, public_key, lock(db, slot, wrapped), step, therapist.id],
        )
        end_sessions_of(db, THERAPIST_SESSIONS, therapist.id)
        gone = doomed(db, [old])
    destroy_slots(db, gone)
    return therapist.id, secret_key


class LoginThrottle:
    """How failed logins pause a login name: five tries, then a pause.

    Names that exist are counted in the database (``failed_logins``); names that exist
    nowhere are counted here, in memory only, under a keyed hash, so that they reach
    the same "paused" answer after as many tries, and nobody learns from the answer,
    or from its timing, whether a login name exists.

    :param pause_seconds: how long a pause lasts, and how long a count is kept.
    """

    #: Unknown names remembered at most. Each needs an argon2 run of the portal's one
    #: slot to enter and is forgotten a pause's length later, so some 6,000 can be held at
    #: once (0.15 s each, 15 minutes); beyond this, counts that have run out go first.
    MAX_NAMES = 100_000

    def __init__(self, pause_seconds: int = PAUSE_SECONDS) -> None:
        self.pause_seconds = pause_seconds
        self._key = random_bytes(KEY_BYTES)
        self._decoy_salt = random_bytes(SALT_BYTES)
        #: keyed hash of a name -> (failures, count forgotten at, paused until)
        self._unknown: dict[bytes, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def claim_unknown(self, login_name: str, now: int) -> None:
        """Count one try at a name that does not exist, as a real account would.

        :raises LoginPausedError: while paused, or when this try starts the pause.
        """
        name = keyed_hash(login_name.encode(), self._key, b"unknown-login")
        with self._lock:
            failures, forget_at, paused_until = self._unknown.pop(name, (0, 0, 0))
            if forget_at <= now and paused_until <= now:
                failures, paused_until = 0, 0
            if paused_until > now:
                self._unknown[name] = (failures, forget_at, paused_until)
                raise LoginPausedError(paused_until)
            if failures >= MAX_FAILURES:
                self._unknown[name] = (0, forget_at, now + self.pause_seconds)
                raise LoginPausedError(now + self.pause_seconds)
            self._unknown[name] = (failures + 1, now + self.pause_seconds, 0)
            if len(self._unknown) > self.MAX_NAMES:
                for quiet in [
                    k for k, (_f, at, until) in self._unknown.items() if max(at, until) <= now
                ]:
                    del self._unknown[quiet]
            while len(self._unknown) > self.MAX_NAMES:
                del self._unknown[next(iter(self._unknown))]

    def give_back(self, login_name: str) -> None:
        """Undo the count of a try that tried nothing (argon2 was busy)."""
        name = keyed_hash(login_name.encode(), self._key, b"unknown-login")
        with self._lock:
            failures, forget_at, paused_until = self._unknown.get(name, (0, 0, 0))
            if failures > 0:
                self._unknown[name] = (failures - 1, forget_at, paused_until)

    def decoy(self, deriver: KeyDeriver, passphrase: str) -> None:
        """Do the argon2 work of a real try, for a name that has no key to try."""
        deriver.derive(passphrase.encode(), self._decoy_salt)


@dataclass(frozen=True)
class _Opened:
    """A therapist's key and TOTP secret, open, and the secret (normalised) that opened them."""

    secret_key: bytes
    totp_secret: str
    outdated: bool
    secret: str


def _open(db: Database, deriver: KeyDeriver, totp_key: bytes, row: Any, typed: str) -> _Opened:
    """Open a therapist's key with what they typed (a passphrase, or a password to renew).

    :param row: ``slot, wrapped_secret_key, totp_secret, renew_passphrase``.
    :raises LoginError: when it does not open.
    """
    slot, locked, legacy_totp, renew = row
    try:
        secret = typed if renew else normalise_passphrase(typed)
        if len(secret) > MAX_INPUT_CHARS:
            raise LoginError
        opened = unwrap_with_passphrase(deriver, unlock(db, slot, locked), secret)
        if renew:  # a chosen password wrapped the key alone; TOTP was under a server key
            totp_secret = unwrap_key(legacy_totp, totp_key).decode()
            return _Opened(opened.payload, totp_secret, opened.outdated, secret)
    except (PassphraseInputError, SlotGoneError, UnwrapError):
        raise LoginError from None
    payload = opened.payload
    return _Opened(payload[:KEY_BYTES], payload[KEY_BYTES:].decode(), opened.outdated, secret)


_LOGIN_ROW = (
    "SELECT id, slot, wrapped_secret_key, totp_secret, renew_passphrase, totp_last_step"
    " FROM therapists"
)


def log_in(
    db: Database,
    deriver: KeyDeriver,
    totp_key: bytes,
    login_name: str,
    passphrase: str,
    code: str,
    now: int,
    throttle: LoginThrottle,
) -> LoggedIn:
    """Check login name, passphrase and a fresh TOTP code; return the open secret key.

    The attempt is claimed before anything is checked (see :func:`_attempt`), so
    neither parallel guesses nor a saturated server can get around the limit. A name
    that does not exist costs the same argon2 work and reaches the same pause.

    :raises LoginError: for any wrong part, a disabled or unenrolled account.
    :raises LoginPausedError: while the login name is paused.
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated (not counted).
    """
    wanted = " ".join(login_name.split()).lower()
    row = db.execute(
        f"{_LOGIN_ROW} WHERE login_name = ? AND disabled = 0 AND slot IS NOT NULL", [wanted]
    ).fetchone()
    if row is None:
        throttle.claim_unknown(wanted, now)
        try:
            throttle.decoy(deriver, passphrase[:MAX_INPUT_CHARS])
        except KdfBusyError:  # tried nothing: the claim goes back, as for a real name
            throttle.give_back(wanted)
            raise
        raise LoginError
    therapist_id, slot, _locked, _totp, renew, last_step = row
    with _attempt(db, therapist_id, now, throttle.pause_seconds):
        opened = _open(db, deriver, totp_key, row[1:5], passphrase)
        step = totp_step(opened.totp_secret, code, now, after=last_step)
        if step is None:
            raise LoginError
        with transaction(db):
            # Single use even when two logins race; and still the account it was a moment ago.
            used = db.execute(
                "UPDATE therapists SET totp_last_step = ?, failed_logins = 0"
                " WHERE id = ? AND totp_last_step < ? AND slot = ? AND disabled = 0",
                [step, therapist_id, step, slot],
            )
        if used.rowcount != 1:
            raise LoginError
    if opened.outdated and not renew:  # raised argon2 costs: wrap again with today's
        with contextlib.suppress(KdfBusyError):  # busy: the next login tries again
            _rewrap(db, deriver, therapist_id, slot, opened, opened.secret, end_sessions=False)
    return LoggedIn(therapist_id, opened.secret_key, bool(renew))


@contextmanager
def _attempt(db: Database, therapist_id: str, now: int, pause_seconds: int) -> Iterator[None]:
    """Claim one login attempt for the block; a busy server gives the claim back.

    Claiming happens in one write transaction before anything is checked: the first
    :data:`MAX_FAILURES` claims since the last success go ahead, the next one pauses
    the account for ``pause_seconds``. A block that ends in :class:`KdfBusyError`
    tried nothing, so its claim is returned; a successful login resets the count itself.

    :raises LoginPausedError: while paused, or when this claim starts the pause.
    """
    with transaction(db):
        locked, failures, forget_at = db.execute(
            "SELECT locked_until, failed_logins, failures_expire_at FROM therapists WHERE id = ?",
            [therapist_id],
        ).fetchone()
        if forget_at <= now and locked <= now:
            failures = 0  # run out, to the second (the purge clears it within a minute)
        if locked > now:
            raise LoginPausedError(locked)
        if failures >= MAX_FAILURES:
            db.execute(
                "UPDATE therapists SET failed_logins = 0, locked_until = ? WHERE id = ?",
                [now + pause_seconds, therapist_id],
            )
        else:
            db.execute(
                "UPDATE therapists SET failed_logins = ?, locked_until = 0,"
                " failures_expire_at = ? WHERE id = ?",
                [failures + 1, now + pause_seconds, therapist_id],
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


def _rewrap(
    db: Database,
    deriver: KeyDeriver,
    therapist_id: str,
    old_slot: int,
    opened: _Opened,
    passphrase: str,
    end_sessions: bool,
) -> bool:
    """Wrap the key pair and TOTP secret under ``passphrase`` (today's costs), in a new slot.

    The old slot is destroyed once this is saved: stale copies of the old wrapping
    (the chosen password's too) then open nothing, whoever knows the old secret.

    :param end_sessions: end every session (a new passphrase).
    :returns: whether the account was still as it was (not reset or changed meanwhile).
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    wrapped = wrap_with_passphrase(
        deriver, _payload(opened.secret_key, opened.totp_secret), passphrase
    )
    with transaction(db):
        slot = new_slot(db)
        changed = db.execute(
            "UPDATE therapists SET slot = ?, wrapped_secret_key = ?, totp_secret = NULL,"
            " renew_passphrase = 0 WHERE id = ? AND slot = ? AND disabled = 0",
            [slot, lock(db, slot, wrapped), therapist_id, old_slot],
        ).rowcount
        if changed and end_sessions:
            end_sessions_of(db, THERAPIST_SESSIONS, therapist_id)
        gone = doomed(db, [old_slot] if changed else [slot])
    destroy_slots(db, gone)
    checkpoint(db)  # the old wrapping must not linger in the write-ahead log
    return bool(changed)


def change_passphrase(
    db: Database,
    deriver: KeyDeriver,
    totp_key: bytes,
    therapist_id: str,
    current: str,
    new: str,
    now: int,
    throttle: LoginThrottle,
) -> None:
    """Replace the passphrase (or a chosen password) with a new generated one.

    The key pair stays (every conversation stays readable); it is wrapped again, in a
    new slot, and the old slot is destroyed. Every session ends. A wrong current
    passphrase counts against the same limit as a failed login.

    :param new: the generated passphrase, normalised, as the therapist typed it back.
    :raises LoginError: when ``current`` is wrong, or the account changed meanwhile.
    :raises LoginPausedError: while the account is paused.
    :raises PassphraseNotGeneratedError: for a new passphrase the server did not make.
    """
    therapist = get_therapist(db, therapist_id)
    _require_generated(new, therapist)
    row = db.execute(f"{_LOGIN_ROW} WHERE id = ?", [therapist_id]).fetchone()
    if row is None or row[1] is None:
        raise LoginError
    with _attempt(db, therapist_id, now, throttle.pause_seconds):
        opened = _open(db, deriver, totp_key, row[1:5], current)
        with transaction(db):
            db.execute("UPDATE therapists SET failed_logins = 0 WHERE id = ?", [therapist_id])
    if not _rewrap(db, deriver, therapist_id, row[1], opened, new, end_sessions=True):
        raise LoginError  # disabled or reset by the operator meanwhile


def _withdraw_free_slots(db: Database, therapist_id: str, now: int) -> None:
    """Delete the therapist's future slots that nobody has booked (inside a transaction)."""
    db.execute(
        "DELETE FROM slots WHERE therapist_id = ? AND starts_at > ?"
        " AND id NOT IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
        [therapist_id, now],
    )


def disable_therapist(db: Database, name: str, now: int, role: str = THERAPIST) -> int:
    """Lock a therapist (or researcher) out: end their sessions, withdraw their free slots.

    Booked appointments stay, so the operator can arrange them with the participants.

    :returns: how many booked, upcoming appointments the therapist still has.
    :raises UnknownTherapistError: when no therapist (of ``role``) has this name.
    """
    therapist = find_by_name(db, name, role)
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
    db: Database,
    name: str,
    now: int,
    link_seconds: int = ENROLMENT_SECONDS,
    role: str = THERAPIST,
) -> Enrolment:
    """Clear passphrase and TOTP and issue a new enrolment link (which also re-enables).

    The old key pair cannot be opened without the old passphrase, so enrolment makes
    a new one. The login name stays. Free times are withdrawn: nobody should book a
    therapist who cannot log in yet. The therapist's conversations and notes are deleted:
    they were sealed to the old key pair, so the therapist could never read them again.
    Then the slots of the old key pair, those conversations and those notes are destroyed,
    so nothing reopens them for whoever enrols next, or from a copy of the disk. A pair that meets
    again starts a new conversation under both current keys.

    :returns: the login name and the new enrolment token.
    :raises UnknownTherapistError: when no therapist (of ``role``) has this name.
    """
    therapist = find_by_name(db, name, role)
    with transaction(db):
        (old,) = db.execute("SELECT slot FROM therapists WHERE id = ?", [therapist.id]).fetchone()
        db.execute(
            "UPDATE therapists SET slot = NULL, public_key = NULL, wrapped_secret_key = NULL,"
            " totp_secret = NULL, totp_last_step = 0, renew_passphrase = 0,"
            " failed_logins = 0, locked_until = 0, disabled = 0 WHERE id = ?",
            [therapist.id],
        )
        end_sessions_of(db, THERAPIST_SESSIONS, therapist.id)
        _withdraw_free_slots(db, therapist.id, now)
        slots = [
            old,
            *conversation_slots(db, "therapist_id", therapist.id),
            *note_slots(db, therapist_id=therapist.id),
        ]
        db.execute("DELETE FROM notes WHERE therapist_id = ?", [therapist.id])
        db.execute(
            "DELETE FROM messages WHERE conversation_id IN"
            " (SELECT id FROM conversations WHERE therapist_id = ?)",
            [therapist.id],
        )
        db.execute("DELETE FROM conversations WHERE therapist_id = ?", [therapist.id])
        token = _issue_enrolment(db, therapist.id, now, link_seconds)
        gone = doomed(db, slots)
    destroy_slots(db, gone)
    checkpoint(db)
    return Enrolment(therapist.login_name, token)
