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

from stillroom.crypto.box import BUCKETS, ENVELOPE_VERSION
from stillroom.onion import tor
from stillroom.onion.errors import TorConfigError
from stillroom.webapp import server, store
from stillroom.webapp.inventory import declared_columns
from stillroom.webapp.settings import Settings

#: The purge runs every minute; a row may outlive its deadline by that much and a margin.
GRACE_SECONDS = 5 * 60
#: Bytes around the padded plaintext of an envelope: version byte, nonce, tag.
ENVELOPE_OVERHEAD = 1 + 24 + 16


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
        "conversations WHERE key_for_participant IS NULL OR key_for_therapist IS NULL",
        [],
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
    """Every stored message is ciphertext in the current envelope format and sizes."""
    sizes = {bucket + ENVELOPE_OVERHEAD for bucket in BUCKETS}
    total = bad = 0
    for (envelope,) in db.execute("SELECT envelope FROM messages"):
        total += 1
        if not envelope or envelope[0] != ENVELOPE_VERSION or len(envelope) not in sizes:
            bad += 1
    if bad:
        return Check("envelopes", False, f"{bad} of {total} messages are not in envelope v1")
    return Check("envelopes", True, f"{total} messages, all envelope v{ENVELOPE_VERSION}")


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
    """Only the owner can read the data directory and anything in it."""
    open_to_others = [
        str(path.relative_to(settings.data_dir.parent))
        for path in [settings.data_dir, *sorted(settings.data_dir.rglob("*"))]
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ]
    if open_to_others:
        return Check("permissions", False, "readable by others: " + ", ".join(open_to_others))
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


CHECKS: tuple[Callable[[Database, Settings, int], Check], ...] = (
    check_schema,
    check_retention,
    check_envelopes,
    check_pragmas,
    check_permissions,
    check_onion,
    check_no_access_log,
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
