"""The auditor's report: the live data directory and settings against the promises.

Each check reads the real files, independently of the code that writes them: the
retention rules are written out again here as plain SQL, not borrowed from the purge,
so that a bug in the purge shows up as a breach instead of hiding itself.
What no check can see is a running server's memory; ``docs/auditing.md`` says so.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlite_utils import Database

from stillroom.crypto.box import BUCKETS, ENVELOPE_VERSION, LEGACY_ENVELOPE_VERSION
from stillroom.crypto.slots import SLOT_BYTES
from stillroom.onion import tor
from stillroom.onion.errors import TorConfigError
from stillroom.webapp import server, store
from stillroom.webapp.inventory import declared_columns
from stillroom.webapp.keyslots import SLOT_FILE
from stillroom.webapp.settings import Settings, is_local_address
from stillroom.webapp.study import log as study_log

#: The purge runs every minute; a row may outlive its deadline by that much and a margin.
GRACE_SECONDS = 5 * 60
#: Bytes around the padded plaintext of an envelope: version byte, nonce, tag.
ENVELOPE_OVERHEAD = 1 + 24 + 16
#: A study's research data, erased for good on its erasure day (written out again here
#: rather than taken from the purge, as every rule of this report).
RESEARCH_TABLES = (
    "safety_flags",
    "study_answers",
    "study_consents",
    "study_participants",
    "allocations",
    "allocation_lists",
    "study_log",
)
#: Parts of a table's or column's name that would mean therapist support stores something.
ASSIST_WORDS = ("assist", "embedding", "vector", "snippet", "risk_topic", "summar")
#: The triggers that refuse changes to the study log and to allocations.
APPEND_ONLY_TRIGGERS = {
    f"{table}_no_{change}"
    for table in ("study_log", "allocations")
    for change in ("update", "delete")
}


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, whether it holds, and what was found."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        """Return the check as the JSON report shows it."""
        return asdict(self)


def check_schema(db: Database, settings: Settings, now: int) -> Check:
    """Every table and column in the database is declared in the inventory, and vice versa."""
    actual = {
        table.name: {column.name for column in table.columns}
        for table in db.tables
        if not table.name.startswith("sqlite_")
    }
    declared = declared_columns()
    extra = sorted(
        f"{name}.{column}" for name in actual for column in actual[name] - declared.get(name, set())
    )
    missing = sorted(
        f"{name}.{column}"
        for name in declared
        for column in declared[name] - actual.get(name, set())
    )
    if extra or missing:
        return Check(
            "schema",
            False,
            f"undeclared: {', '.join(extra) or 'none'}; declared but absent:"
            f" {', '.join(missing) or 'none'}",
        )
    return Check("schema", True, f"{len(actual)} tables, all declared in the inventory")


def _overdue(settings: Settings, now: int) -> Iterator[tuple[str, str, list[object]]]:
    """Yield (what, SQL counting overdue rows, parameters) for every retention rule."""
    late = now - GRACE_SECONDS
    day = datetime.datetime.fromtimestamp(late, datetime.UTC).date()
    yield "messages past their expiry day", "messages WHERE expires_day <= ?", [day.isoformat()]
    for table in ("sessions", "therapist_sessions"):
        yield (
            f"expired {table}",
            f"{table} WHERE idle_expires_at <= ? OR absolute_expires_at <= ?",
            [late, late],
        )
    yield "unused enrolment links", "enrolments WHERE expires_at <= ?", [late]
    yield (
        "appointments past their retention",
        "appointments WHERE ends_at + ? <= ?",
        [settings.appointment_retention_days * 24 * 3600, late],
    )
    yield "slots that have ended", "slots WHERE ends_at <= ?", [late]
    unused = day - datetime.timedelta(days=settings.account_retention_days)
    yield "unused accounts", "participants WHERE last_login_day <= ?", [unused.isoformat()]
    yield (
        "failed-login counts past their time",
        "therapists WHERE (failed_logins > 0 OR locked_until > 0)"
        " AND failures_expire_at <= ? AND locked_until <= ?",
        [late, late],
    )
    yield (
        "conversations with a shredded key",
        "conversations WHERE slot IS NULL OR key_for_participant IS NULL"
        " OR key_for_therapist IS NULL",
        [],
    )
    yield "message keys past their day", "day_keys WHERE expires_day <= ?", [day.isoformat()]
    noted = day - datetime.timedelta(days=settings.note_retention_days)
    yield (
        "therapists' notes past their retention",
        "notes WHERE edited_day <= ?",
        [noted.isoformat()],
    )
    # A study's research data must not outlive the erasure day its definition sets.
    erase_due = "(SELECT erase_day FROM study) <= ?"
    for table in RESEARCH_TABLES:
        yield (
            f"{table} rows past the study's erasure day",
            f"{table} WHERE {erase_due}",
            [day.isoformat()],
        )
    yield (
        "notes about study participants past the study's erasure day",
        "notes WHERE participant_id IN (SELECT participant_id FROM study_participants)"
        " AND (SELECT erase_day FROM study) <= ?",
        [day.isoformat()],
    )


def check_retention(db: Database, settings: Settings, now: int) -> Check:
    """No row has outlived the retention the inventory declares for it."""
    breaches = []
    for what, where, parameters in _overdue(settings, now):
        (count,) = db.execute(f"SELECT count(*) FROM {where}", parameters).fetchone()  # noqa: S608
        if count:
            breaches.append(f"{count} {what}")
    if breaches:
        return Check("retention", False, "; ".join(breaches))
    return Check("retention", True, "no row is older than its retention")


def check_envelopes(db: Database, settings: Settings, now: int) -> Check:
    """Every stored message is ciphertext in a known envelope format and one of its sizes.

    Version 2 is encrypted under its conversation's and its day's keys; version 1 (from
    before day keys) under its conversation's alone, and it is gone within the retention.
    """
    sizes = {bucket + ENVELOPE_OVERHEAD for bucket in BUCKETS}
    versions = {ENVELOPE_VERSION: 0, LEGACY_ENVELOPE_VERSION: 0}
    bad = 0
    for (envelope,) in db.execute("SELECT envelope FROM messages"):
        if not envelope or envelope[0] not in versions or len(envelope) not in sizes:
            bad += 1
        else:
            versions[envelope[0]] += 1
    total = bad + sum(versions.values())
    if bad:
        return Check("envelopes", False, f"{bad} of {total} messages are not in an envelope")
    legacy = versions[LEGACY_ENVELOPE_VERSION]
    older = (
        f" ({legacy} of them v{LEGACY_ENVELOPE_VERSION}, from before day keys)" if legacy else ""
    )
    return Check("envelopes", True, f"{total} messages, all padded envelopes{older}")


def check_key_slots(db: Database, settings: Settings, now: int) -> Check:
    """Every key slot that holds a key belongs to a row, and every row's slot holds its key.

    A key that outlives its row would keep a deleted account, conversation or day
    readable from a copy of the disk; a row whose slot is empty has lost its key.
    """
    path = settings.data_dir / SLOT_FILE
    if not path.exists():
        return Check("key-slots", False, f"{SLOT_FILE} is missing")
    content = path.read_bytes()
    if len(content) % SLOT_BYTES:
        return Check("key-slots", False, f"{SLOT_FILE} is not made of {SLOT_BYTES}-byte slots")
    holding = {
        number
        for number in range(len(content) // SLOT_BYTES)
        if content[number * SLOT_BYTES : (number + 1) * SLOT_BYTES].strip(b"\0")
    }
    named = {
        row[0]
        for row in db.execute(
            "SELECT slot FROM participants UNION SELECT slot FROM therapists"
            " UNION SELECT slot FROM conversations UNION SELECT slot FROM day_keys"
            " UNION SELECT slot FROM allocation_lists"
            " UNION SELECT slot FROM notes"
            " UNION SELECT slot FROM study_participants"
        )
        if row[0] is not None
    }
    problems = []
    if holding - named:
        problems.append(f"{len(holding - named)} keys outlive what they locked")
    if named - holding:
        problems.append(f"{len(named - holding)} rows name a slot without a key")
    if problems:
        return Check("key-slots", False, "; ".join(problems))
    return Check(
        "key-slots", True, f"{len(holding)} keys, each locking a live row; no other key is kept"
    )


def check_passphrases(db: Database, settings: Settings, now: int) -> Check:
    """No therapist's key is still guarded by a password they chose (DESIGN §9).

    Therapists enrolled before generated passphrases take one at their next login;
    until then their key, and every conversation it opens, is as weak as their password.
    """
    (chosen,) = db.execute(
        "SELECT count(*) FROM therapists WHERE renew_passphrase = 1 AND slot IS NOT NULL"
    ).fetchone()
    if chosen:
        return Check(
            "passphrases",
            False,
            f"{chosen} therapists' keys are still guarded by a chosen password: they take a"
            " generated passphrase at their next login ('stillroom therapist reset' otherwise)",
        )
    return Check("passphrases", True, "every therapist's key is guarded by a generated passphrase")


def check_pragmas(db: Database, settings: Settings, now: int) -> Check:
    """The file is in WAL mode and intact; every connection the apps open deletes securely."""
    problems = []
    (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal":
        problems.append(f"journal_mode={mode}")
    (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
    if integrity != "ok":
        problems.append(f"integrity_check={integrity}")
    applied = {name: value.upper() for name, value in store.PRAGMAS}
    for name, value in (("secure_delete", "ON"), ("foreign_keys", "ON"), ("synchronous", "FULL")):
        if applied.get(name) != value:
            problems.append(f"the apps open connections without {name}={value}")
    if problems:
        return Check("pragmas", False, ", ".join(problems))
    return Check(
        "pragmas", True, "WAL, intact; connections use secure_delete, foreign keys, FULL sync"
    )


def check_permissions(db: Database, settings: Settings, now: int) -> Check:
    """Only the owner can read the data directory and anything in it; nothing in it is a
    link that could lead the service's files elsewhere."""
    open_to_others, links = [], []
    for path in [settings.data_dir, *sorted(settings.data_dir.rglob("*"))]:
        try:
            info = path.lstat()
        except FileNotFoundError:  # gone since the listing (a running server's temporary file)
            continue
        name = str(path.relative_to(settings.data_dir.parent))
        if stat.S_ISLNK(info.st_mode):
            links.append(name)
        elif info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            open_to_others.append(name)
    problems = []
    if open_to_others:
        problems.append("readable by others: " + ", ".join(open_to_others))
    if links:
        problems.append("links to elsewhere: " + ", ".join(links))
    if problems:
        return Check("permissions", False, "; ".join(problems))
    return Check("permissions", True, "the data directory and its files are the owner's only")


def check_onion(db: Database, settings: Settings, now: int) -> Check:
    """Tor's proof-of-work defence is on and nothing in the extra torrc weakens the service."""
    problems = []
    if settings.pow_queue_rate < 1 or settings.pow_queue_burst < 1:
        problems.append("proof-of-work is off (POW_QUEUE_RATE or POW_QUEUE_BURST is 0)")
    if tor.BASE_CONFIG.get("SafeLogging") != "1":
        problems.append("the launched tor does not get SafeLogging 1")
    if settings.tor_extra_config:
        try:
            tor.read_extra_config(Path(settings.tor_extra_config))
        except TorConfigError as error:
            problems.append(f"extra torrc refused: {error}")
    if problems:
        return Check("onion", False, "; ".join(problems))
    return Check("onion", True, "proof-of-work on, SafeLogging 1, no option weakened")


def check_no_access_log(db: Database, settings: Settings, now: int) -> Check:
    """Neither the WSGI server nor the launched tor writes a log of requests."""
    problems = []
    if server.ACCESS_LOG is not None:
        problems.append("the WSGI server has an access log")
    if not tor.BASE_CONFIG.get("Log", "").lower().startswith("notice"):
        problems.append("the launched tor logs below notice level")
    if problems:
        return Check("access-log", False, "; ".join(problems))
    return Check("access-log", True, "no access log; tor logs notices only, SafeLogging on")


def check_study_log(db: Database, settings: Settings, now: int) -> Check:
    """The study log's hash chain is whole, and the triggers that keep it append-only exist.

    Once the study's research data is erased the log must be empty: its chain is gone
    with it, as the study's rules say.
    """
    erased = db.execute("SELECT erased_day FROM study WHERE erased_day IS NOT NULL").fetchone()
    if erased is not None:
        (rows,) = db.execute("SELECT count(*) FROM study_log").fetchone()
        if rows:
            return Check("study-log", False, f"{rows} rows outlive the erasure on {erased[0]}")
        return Check("study-log", True, f"the study ended; its log was erased on {erased[0]}")
    try:
        head = study_log.verify(db)
    except study_log.StudyLogError as error:
        return Check("study-log", False, str(error))
    if head.seq == 0:
        return Check("study-log", True, "no study has been started")
    triggers = {
        row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    missing = sorted(APPEND_ONLY_TRIGGERS - triggers)
    if missing:
        return Check("study-log", False, f"the chain holds, but triggers are gone: {missing}")
    return Check("study-log", True, f"{head.seq} rows, chain intact; head {head}")


def check_assist(db: Database, settings: Settings, now: int) -> Check:
    """Therapist support talks only to this machine and stores nothing in the database.

    Its model address is a socket in the data directory or 127.0.0.1, and every socket in
    the data directory belongs to the service and only the service can write to it (another
    local user's process there could read what the portal sends the model).
    """
    features = settings.assist_features
    if not features:
        return Check("assist", True, "therapist support is off")
    problems = []
    address = settings.assist_model_address
    if address and not is_local_address(address, settings.data_dir):
        problems.append(f"the model address {address} is not on this machine")
    owner = settings.data_dir.stat().st_uid
    sockets = [path for path in sorted(settings.data_dir.rglob("*")) if path.is_socket()]
    if address.startswith("unix:"):
        named = Path(address.removeprefix("unix:"))
        if named.exists() and not named.is_socket():
            problems.append(f"{named.name} is not a socket")
    for path in sockets:
        info = path.lstat()
        name = str(path.relative_to(settings.data_dir))
        if info.st_uid != owner:
            problems.append(f"the socket {name} belongs to another user")
        if info.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
            problems.append(f"others can write to the socket {name}")
    stored = sorted(
        f"{table.name}.{column.name}" if column else table.name
        for table in db.tables
        for column in [None, *table.columns]
        if any(word in (column.name if column else table.name).lower() for word in ASSIST_WORDS)
    )
    if stored:
        problems.append(f"the database holds {', '.join(stored)}")
    if problems:
        return Check("assist", False, "; ".join(problems))
    where = address or (f"{len(sockets)} socket(s) in the data directory" if sockets else "none")
    return Check(
        "assist",
        True,
        f"{', '.join(features)} on; model endpoint: {where}, local; nothing of it in the database",
    )


CHECKS: tuple[Callable[[Database, Settings, int], Check], ...] = (
    check_schema,
    check_retention,
    check_envelopes,
    check_key_slots,
    check_passphrases,
    check_pragmas,
    check_permissions,
    check_onion,
    check_no_access_log,
    check_study_log,
    check_assist,
)


def open_read_only(settings: Settings) -> sqlite3.Connection:
    """Open the database read-only, also where the data directory itself is read-only.

    A WAL database wants its shared-memory file even for reading; where none can be
    made, nothing can change the file either, so it is read as immutable.
    """
    uri = settings.database_path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opening is lazy
    except sqlite3.OperationalError:
        conn.close()
        if os.access(settings.data_dir, os.W_OK):
            raise
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
    return conn


def run_audit(settings: Settings, now: int) -> list[Check]:
    """Run every check against the data directory of ``settings``; change nothing.

    The database is opened read-only, so the audit cannot repair what it should report.
    """
    if not settings.database_path.exists():
        return [Check("database", False, f"no database at {settings.database_path}")]
    conn = open_read_only(settings)
    db = Database(conn)
    try:
        return [check(db, settings, now) for check in CHECKS]
    finally:
        conn.close()
