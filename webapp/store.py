"""The SQLite store: one file, opened with the same safety pragmas every time.

No ORM: sqlite-utils for schema changes and convenience, plain SQL where it reads
better. Writers take the lock up front (``BEGIN IMMEDIATE``) so that two requests
never deadlock upgrading a read lock.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from stillroom.crypto.box import seal
from stillroom.crypto.kdf import legacy_wrapped
from stillroom.crypto.slots import NO_TAG, create_slot_file
from stillroom.webapp.keyslots import (
    discard_created,
    forget_created,
    lock,
    new_slots,
    slot_path,
)

#: Per-connection pragmas (DESIGN §4). ``secure_delete`` overwrites deleted content;
#: ``trusted_schema=OFF`` refuses functions smuggled into the schema.
PRAGMAS = (
    ("foreign_keys", "ON"),
    ("secure_delete", "ON"),
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("busy_timeout", "5000"),
    ("trusted_schema", "OFF"),
)

migrations = Migrations("stillroom")
log = logging.getLogger(__name__)

#: What the operator should do, by SQLite's primary result code of the failed write.
_UNWRITABLE = {
    sqlite3.SQLITE_FULL: (
        "the disk is full",
        "free space on the filesystem of the data directory; reading and the purge go on",
    ),
    sqlite3.SQLITE_READONLY: (
        "it is read-only",
        "mount its filesystem read-write and make the data directory and its files"
        " belong to the user that runs Stillroom",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "it cannot be opened for writing",
        "check the filesystem of the data directory and the owner of its files",
    ),
    sqlite3.SQLITE_IOERR: (
        "the disk reports input/output errors",
        "check the disk (the kernel log says more) and restore from a backup if needed",
    ),
}
#: An unwritable database is reported at most this often (every request would fail).
_REPORT_EVERY_SECONDS = 60
_last_report = -float("inf")


class StoreUnwritableError(Exception):
    """The database cannot be written: its disk is full, or it is read-only or failing."""

    def __init__(self, code: int, where: str) -> None:
        self.code = code
        self.problem, self.remedy = _UNWRITABLE[code]
        super().__init__(
            f"{where} cannot be written: {self.problem}. {self.remedy[0].upper()}{self.remedy[1:]}."
        )

    @property
    def disk_full(self) -> bool:
        """Whether freeing space would help (the purge's reserve is for that)."""
        return self.code == sqlite3.SQLITE_FULL

    def report(self) -> None:
        """Log the problem for the operator, at most once a minute, with nothing about anyone."""
        global _last_report
        if time.monotonic() - _last_report >= _REPORT_EVERY_SECONDS:
            _last_report = time.monotonic()
            log.error("%s", self)


def raise_if_unwritable(error: sqlite3.Error, path: Path | str) -> None:
    """Raise the :class:`StoreUnwritableError` that ``error`` on ``path`` means, if any."""
    extended = getattr(error, "sqlite_errorcode", 0)
    code = extended & 0xFF  # the primary code of an extended one
    # Opening a database whose shared-memory file cannot grow, or failing to write at
    # all, on a filesystem with no space left is a full disk, not a failing one.
    if extended == sqlite3.SQLITE_IOERR_SHMSIZE or (
        code == sqlite3.SQLITE_IOERR and _no_space(path)
    ):
        code = sqlite3.SQLITE_FULL
    if code in _UNWRITABLE:
        raise StoreUnwritableError(code, f"the database {path}") from error


def _no_space(path: Path | str) -> bool:
    """Whether the filesystem that holds ``path`` has no block left for us."""
    try:
        return os.statvfs(Path(path).parent).f_bavail == 0
    except OSError:
        return False


def database_path(db: Database) -> str:
    """Return the file behind a connection, for messages to the operator."""
    path: str = db.execute("PRAGMA database_list").fetchone()[2]
    return path


#: The same problems met by the filesystem rather than by SQLite.
_ERRNO_CODES = {
    errno.ENOSPC: sqlite3.SQLITE_FULL,
    errno.EDQUOT: sqlite3.SQLITE_FULL,
    errno.EROFS: sqlite3.SQLITE_READONLY,
    errno.EACCES: sqlite3.SQLITE_READONLY,
    errno.EPERM: sqlite3.SQLITE_READONLY,
    errno.EIO: sqlite3.SQLITE_IOERR,
}


def unwritable_path(error: OSError, path: Path) -> StoreUnwritableError | None:
    """Return the :class:`StoreUnwritableError` that an ``OSError`` on ``path`` means, if any."""
    code = _ERRNO_CODES.get(error.errno or 0)
    return None if code is None else StoreUnwritableError(code, str(path))


@migrations()
def create_accounts(db: Database) -> None:
    """Participants and their server-side sessions."""
    db.execute(
        """
        CREATE TABLE participants (
            id TEXT PRIMARY KEY,
            lookup_hash BLOB NOT NULL UNIQUE,
            kdf_salt BLOB NOT NULL,
            public_key BLOB NOT NULL,
            wrapped_secret_key BLOB NOT NULL,
            last_login_day TEXT NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE sessions (
            token_hash BLOB PRIMARY KEY,
            participant_id TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
            wrapped_secret_key BLOB NOT NULL,
            idle_expires_at INTEGER NOT NULL,
            absolute_expires_at INTEGER NOT NULL
        ) STRICT
        """
    )
    db.execute("CREATE INDEX sessions_participant ON sessions(participant_id)")


@migrations()
def create_portal_and_booking(db: Database) -> None:
    """Therapists, their enrolment links and sessions; slots, appointments and pairs."""
    db.execute("ALTER TABLE participants ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC'")
    db.execute(
        """
        CREATE TABLE therapists (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            login_name TEXT NOT NULL UNIQUE,
            languages TEXT NOT NULL,
            time_zone TEXT NOT NULL,
            password_hash TEXT,
            kdf_salt BLOB,
            public_key BLOB,
            wrapped_secret_key BLOB,
            totp_secret BLOB,
            totp_last_step INTEGER NOT NULL DEFAULT 0,
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE enrolments (
            token_hash BLOB PRIMARY KEY,
            therapist_id TEXT NOT NULL UNIQUE REFERENCES therapists(id) ON DELETE CASCADE,
            expires_at INTEGER NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE therapist_sessions (
            token_hash BLOB PRIMARY KEY,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            wrapped_secret_key BLOB NOT NULL,
            idle_expires_at INTEGER NOT NULL,
            absolute_expires_at INTEGER NOT NULL
        ) STRICT
        """
    )
    db.execute("CREATE INDEX therapist_sessions_owner ON therapist_sessions(therapist_id)")
    db.execute(
        """
        CREATE TABLE slots (
            id TEXT PRIMARY KEY,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            starts_at INTEGER NOT NULL,
            ends_at INTEGER NOT NULL,
            languages TEXT NOT NULL,
            CHECK (ends_at > starts_at)
        ) STRICT
        """
    )
    db.execute("CREATE INDEX slots_therapist ON slots(therapist_id, starts_at)")
    db.execute("CREATE INDEX slots_start ON slots(starts_at)")
    db.execute(
        """
        CREATE TABLE appointments (
            id TEXT PRIMARY KEY,
            slot_id TEXT UNIQUE REFERENCES slots(id) ON DELETE SET NULL,
            participant_id TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            starts_at INTEGER NOT NULL,
            ends_at INTEGER NOT NULL,
            language TEXT NOT NULL,
            cancelled INTEGER NOT NULL DEFAULT 0,
            cancel_note BLOB
        ) STRICT
        """
    )
    db.execute("CREATE INDEX appointments_participant ON appointments(participant_id)")
    db.execute("CREATE INDEX appointments_therapist ON appointments(therapist_id, starts_at)")
    db.execute(
        """
        CREATE TABLE pairs (
            participant_id TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            pseudonym TEXT NOT NULL,
            PRIMARY KEY (participant_id, therapist_id),
            UNIQUE (therapist_id, pseudonym)
        ) STRICT
        """
    )


@migrations()
def create_chat(db: Database) -> None:
    """Conversations per participant-therapist pair, their messages, chat windows, blocks."""
    db.execute("ALTER TABLE appointments ADD COLUMN chat_extra_minutes INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE appointments ADD COLUMN chat_closed INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE participants ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            participant_id TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            key_for_participant BLOB,
            key_for_therapist BLOB,
            delete_when_chat_ends INTEGER NOT NULL DEFAULT 0,
            UNIQUE (participant_id, therapist_id)
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            envelope BLOB NOT NULL,
            expires_day TEXT NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        ) STRICT
        """
    )
    db.execute("CREATE INDEX messages_expiry ON messages(expires_day)")


@migrations()
def add_failure_expiry(db: Database) -> None:
    """A therapist's count of failed logins is forgotten a while after the last one."""
    db.execute("ALTER TABLE therapists ADD COLUMN failures_expire_at INTEGER NOT NULL DEFAULT 0")


@migrations(transactional=False)
def lock_keys_in_slots(db: Database) -> None:
    """Every deletable key is locked under a slot key too, and lookup hashes leave the database.

    Participants' lookup hashes become the tags of their slots, and their time zone bands
    are sealed to their own keys; wrapped secret keys keep
    their salt and are marked as made with today's argon2 costs (they were: before this,
    other costs locked people out); therapists who chose their password must take a
    generated passphrase at their next login. The participants table is rebuilt without
    its lookup hash, so foreign keys are off for the change (and checked before it ends).
    """
    if "slot" in db.table("participants").columns_dict:
        return  # applied before, and the record of it was lost
    path = slot_path(db)
    if not path.exists():
        create_slot_file(path)
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        with transaction(db):
            _lock_participants(db)
            _lock_therapists(db)
            _lock_conversations(db)
            db.execute(
                "CREATE TABLE day_keys ("
                " expires_day TEXT PRIMARY KEY, slot INTEGER NOT NULL UNIQUE) STRICT"
            )
            if db.execute("PRAGMA foreign_key_check").fetchall():
                raise sqlite3.IntegrityError("the key migration broke a reference")
    finally:
        db.execute("PRAGMA foreign_keys=ON")


def _lock_participants(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE participants_new (
            id TEXT PRIMARY KEY,
            slot INTEGER NOT NULL UNIQUE,
            public_key BLOB NOT NULL,
            wrapped_secret_key BLOB NOT NULL,
            last_login_day TEXT NOT NULL,
            time_zone BLOB NOT NULL,
            blocked INTEGER NOT NULL DEFAULT 0
        ) STRICT
        """
    )
    old = db.execute(
        "SELECT id, lookup_hash, kdf_salt, public_key, wrapped_secret_key, last_login_day,"
        " time_zone, blocked FROM participants"
    ).fetchall()
    slots = new_slots(db, [row[1] for row in old])
    for slot, (participant_id, _lookup, salt, public_key, wrapped, day, zone, blocked) in zip(
        slots, old, strict=True
    ):
        db.execute(
            "INSERT INTO participants_new VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                participant_id,
                slot,
                public_key,
                lock(db, slot, legacy_wrapped(salt, wrapped)),
                day,
                seal(zone.encode(), public_key),  # a band of Europe is the participant's to know
                blocked,
            ],
        )
    db.execute("DROP TABLE participants")
    db.execute("ALTER TABLE participants_new RENAME TO participants")


def _lock_therapists(db: Database) -> None:
    db.execute("ALTER TABLE therapists ADD COLUMN slot INTEGER")
    db.execute("ALTER TABLE therapists ADD COLUMN renew_passphrase INTEGER NOT NULL DEFAULT 0")
    enrolled = db.execute(
        "SELECT id, kdf_salt, wrapped_secret_key FROM therapists"
        " WHERE password_hash IS NOT NULL AND wrapped_secret_key IS NOT NULL"
    ).fetchall()
    slots = new_slots(db, [NO_TAG] * len(enrolled))
    for slot, (therapist_id, salt, wrapped) in zip(slots, enrolled, strict=True):
        db.execute(
            "UPDATE therapists SET slot = ?, wrapped_secret_key = ?, renew_passphrase = 1"
            " WHERE id = ?",
            [slot, lock(db, slot, legacy_wrapped(salt, wrapped)), therapist_id],
        )
    db.execute("ALTER TABLE therapists DROP COLUMN password_hash")
    db.execute("ALTER TABLE therapists DROP COLUMN kdf_salt")
    db.execute("CREATE UNIQUE INDEX therapists_slot ON therapists(slot)")


def _lock_conversations(db: Database) -> None:
    db.execute("ALTER TABLE conversations ADD COLUMN slot INTEGER")
    rows = db.execute(
        "SELECT id, key_for_participant, key_for_therapist FROM conversations"
    ).fetchall()
    slots = new_slots(db, [NO_TAG] * len(rows))
    for slot, (conversation_id, for_participant, for_therapist) in zip(slots, rows, strict=True):
        db.execute(
            "UPDATE conversations SET slot = ?, key_for_participant = ?, key_for_therapist = ?"
            " WHERE id = ?",
            [
                slot,
                None if for_participant is None else lock(db, slot, for_participant),
                None if for_therapist is None else lock(db, slot, for_therapist),
                conversation_id,
            ],
        )
    db.execute("CREATE UNIQUE INDEX conversations_slot ON conversations(slot)")


@migrations()
def add_account_days(db: Database) -> None:
    """The day an account was made, and the day from which a therapist withholds times.

    Accounts made before keep no day (NULL): they count as old enough to book, and as
    made before any block.
    """
    db.execute("ALTER TABLE participants ADD COLUMN created_day TEXT")
    db.execute("ALTER TABLE therapists ADD COLUMN withhold_from_day TEXT")


def connect(path: Path) -> Database:
    """Open the database at ``path`` with the pragmas of :data:`PRAGMAS`.

    The connection is in autocommit mode; use :func:`transaction` for writes.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for name, value in PRAGMAS:
        conn.execute(f"PRAGMA {name}={value}")
    return Database(conn)


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """Run a block as one write transaction that holds the write lock from the start.

    Key slots it created are destroyed again if it is rolled back.

    :raises StoreUnwritableError: when the disk is full or the database read-only; the
        transaction is rolled back and nothing of it was written.
    """
    try:
        db.conn.execute("BEGIN IMMEDIATE")
        yield db
        db.conn.execute("COMMIT")
    except BaseException as error:
        if db.conn.in_transaction:  # SQLite has rolled back by itself after some errors
            db.conn.execute("ROLLBACK")
        discard_created(db)  # key slots the rolled-back rows would have named
        if isinstance(error, sqlite3.OperationalError):
            raise_if_unwritable(error, database_path(db))
        raise
    forget_created(db)


def migrate(path: Path) -> None:
    """Create or upgrade the database at ``path`` and make it private to the owner.

    :raises StoreUnwritableError: when the database cannot be written.
    """
    try:
        db = connect(path)
        try:
            migrations.apply(db)
        finally:
            db.close()
    except sqlite3.OperationalError as error:
        raise_if_unwritable(error, path)
        raise
    for suffix in ("", "-wal", "-shm"):
        sibling = Path(f"{path}{suffix}")
        if sibling.exists():
            sibling.chmod(0o600)


def checkpoint(db: Database, attempts: int = 3, strict: bool = False) -> bool:
    """Fold the write-ahead log into the main file and truncate it.

    Without this, deleted rows survive in the ``-wal`` file until the next
    automatic checkpoint. A reader holding an old snapshot blocks the truncation;
    then this gives up quickly (a request must not hang) and the purge that runs
    every minute truncates it later. It runs after a write has been committed, so by
    default a full disk is reported, not raised: the write is done, and the user
    must not be told that nothing changed.

    :param strict: raise instead (the purge, which can free space and try again).
    :returns: whether the log was truncated.
    :raises StoreUnwritableError: with ``strict``, when the main file cannot take the log.
    """
    db.execute("PRAGMA busy_timeout=100")
    try:
        for _ in range(attempts):
            if not db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                return True
            time.sleep(0.1)
    except sqlite3.OperationalError as error:
        try:
            raise_if_unwritable(error, database_path(db))
        except StoreUnwritableError as problem:
            if strict:
                raise
            problem.report()
            return False
        raise
    finally:
        db.execute(f"PRAGMA busy_timeout={dict(PRAGMAS)['busy_timeout']}")
    if strict:  # said by the purge only: after a participant's deletion it would date it
        log.warning("write-ahead log busy; the next purge truncates it")
    return False


@migrations()
def create_study(db: Database) -> None:
    """The trial: the started study, its hash-chained log, allocation lists and allocations.

    Triggers refuse changes to the log and to allocations. An operator with a shell
    can drop them; the log's hash chain still shows what was changed.
    """
    db.execute(
        """
        CREATE TABLE study (
            id TEXT PRIMARY KEY,
            definition_sha256 TEXT NOT NULL,
            started_day TEXT NOT NULL,
            study_public_key BLOB NOT NULL,
            statistician_public_key BLOB NOT NULL,
            signing_public_key BLOB NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE study_log (
            seq INTEGER PRIMARY KEY,
            day TEXT NOT NULL,
            event TEXT NOT NULL,
            pseudonym TEXT,
            detail TEXT NOT NULL,
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE allocation_lists (
            stratum TEXT PRIMARY KEY,
            length INTEGER NOT NULL,
            commitment TEXT NOT NULL,
            sealed BLOB NOT NULL,
            slot INTEGER NOT NULL UNIQUE,
            entries BLOB NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE allocations (
            pseudonym TEXT PRIMARY KEY,
            stratum TEXT NOT NULL REFERENCES allocation_lists(stratum),
            position INTEGER NOT NULL,
            arm TEXT NOT NULL,
            day TEXT NOT NULL,
            UNIQUE (stratum, position)
        ) STRICT
        """
    )
    for table in ("study_log", "allocations"):
        for change in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{change.lower()} BEFORE {change} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


@migrations()
def add_therapist_sites(db: Database) -> None:
    """A therapist may belong to a site (a trial's centre); a stratum is language and site."""
    db.execute("ALTER TABLE therapists ADD COLUMN site TEXT")


@migrations()
def create_notes(db: Database) -> None:
    """A therapist's private notes per pair, sealed to them and locked under a slot each."""
    db.execute(
        """
        CREATE TABLE notes (
            participant_id TEXT NOT NULL,
            therapist_id TEXT NOT NULL,
            slot INTEGER NOT NULL UNIQUE,
            body BLOB NOT NULL,
            edited_day TEXT NOT NULL,
            PRIMARY KEY (participant_id, therapist_id),
            FOREIGN KEY (participant_id, therapist_id)
                REFERENCES pairs(participant_id, therapist_id) ON DELETE CASCADE
        ) STRICT
        """
    )
    db.execute("CREATE INDEX notes_therapist ON notes(therapist_id)")
    db.execute("CREATE INDEX notes_edited ON notes(edited_day)")


@migrations()
def add_study_amendments(db: Database) -> None:
    """What a started study's amendments are checked against: its allocation part, its consent."""
    db.execute("ALTER TABLE study ADD COLUMN allocation_sha256 TEXT")
    db.execute("ALTER TABLE study ADD COLUMN consent_version TEXT")


@migrations()
def create_study_intake(db: Database) -> None:
    """A study's participants, their consents and their sealed answers.

    Everything goes with the account (``ON DELETE CASCADE``). Answers are sealed to the
    study team and locked under the participant's research slot; ``slot`` is emptied
    when they withdraw and erase, and the slot destroyed. Participants are kept in the
    order of their random account ids (no rowid), so that the order of the rows says
    nothing about who joined or withdrew when.
    """
    db.execute(
        """
        CREATE TABLE study_participants (
            participant_id TEXT PRIMARY KEY REFERENCES participants(id) ON DELETE CASCADE,
            pseudonym TEXT NOT NULL UNIQUE,
            stratum TEXT NOT NULL,
            slot INTEGER UNIQUE,
            step TEXT NOT NULL,
            consent_version TEXT,
            draft_form TEXT,
            draft BLOB,
            sessions_stopped INTEGER NOT NULL DEFAULT 0,
            questionnaires_stopped INTEGER NOT NULL DEFAULT 0,
            erased INTEGER NOT NULL DEFAULT 0
        ) STRICT, WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE study_consents (
            pseudonym TEXT NOT NULL
                REFERENCES study_participants(pseudonym) ON DELETE CASCADE,
            version TEXT NOT NULL,
            text_sha256 TEXT NOT NULL,
            items TEXT NOT NULL,
            day TEXT NOT NULL,
            receipt TEXT NOT NULL,
            PRIMARY KEY (pseudonym, version)
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE study_answers (
            id INTEGER PRIMARY KEY,
            pseudonym TEXT NOT NULL
                REFERENCES study_participants(pseudonym) ON DELETE CASCADE,
            instrument TEXT NOT NULL,
            timepoint TEXT NOT NULL,
            day TEXT NOT NULL,
            sealed BLOB NOT NULL
        ) STRICT
        """
    )
    db.execute("CREATE INDEX study_answers_pseudonym ON study_answers(pseudonym)")


@migrations()
def create_course(db: Database) -> None:
    """The course of sessions: its therapist and count, proposed next times, counted chats."""
    db.execute(
        """
        CREATE TABLE courses (
            participant_id TEXT PRIMARY KEY REFERENCES participants(id) ON DELETE CASCADE,
            therapist_id TEXT REFERENCES therapists(id) ON DELETE SET NULL,
            attended INTEGER NOT NULL DEFAULT 0
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE proposals (
            participant_id TEXT PRIMARY KEY REFERENCES participants(id) ON DELETE CASCADE,
            therapist_id TEXT NOT NULL REFERENCES therapists(id) ON DELETE CASCADE,
            slot_id TEXT NOT NULL REFERENCES slots(id) ON DELETE CASCADE,
            language TEXT NOT NULL
        ) STRICT
        """
    )
    # A proposed next time the therapist made for one participant: nobody else sees it.
    db.execute(
        "ALTER TABLE slots ADD COLUMN for_participant TEXT"
        " REFERENCES participants(id) ON DELETE CASCADE"
    )
    db.execute("ALTER TABLE appointments ADD COLUMN course_counted INTEGER NOT NULL DEFAULT 0")


@migrations()
def add_study_days(db: Database) -> None:
    """A started study's last day, the day its research data is erased, and the day it was.

    A study started before these days were kept has none (NULL): it never ends by itself,
    and ``stillroom study amend`` records them.
    """
    db.execute("ALTER TABLE study ADD COLUMN last_day TEXT")
    db.execute("ALTER TABLE study ADD COLUMN erase_day TEXT")
    db.execute("ALTER TABLE study ADD COLUMN erased_day TEXT")


@migrations()
def add_sides_wrote(db: Database) -> None:
    """Which sides wrote in an appointment's chat: a session counts only when both came."""
    db.execute("ALTER TABLE appointments ADD COLUMN sides_wrote INTEGER NOT NULL DEFAULT 0")


@migrations()
def add_portal_roles(db: Database) -> None:
    """A portal account's role: a therapist, or a researcher who sees only the study's flow."""
    db.execute("ALTER TABLE therapists ADD COLUMN role TEXT NOT NULL DEFAULT 'therapist'")


@migrations()
def create_safety_flags(db: Database) -> None:
    """A safety rule that fired at a submission, for the participant's therapist or the
    site's lead: which rule, on which day, never the answers. It goes with the account."""
    db.execute(
        """
        CREATE TABLE safety_flags (
            id INTEGER PRIMARY KEY,
            participant_id TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
            pseudonym TEXT NOT NULL,
            rule TEXT NOT NULL,
            timepoint TEXT NOT NULL,
            day TEXT NOT NULL,
            site TEXT NOT NULL,
            seen_day TEXT
        ) STRICT
        """
    )
    db.execute("CREATE INDEX safety_flags_participant ON safety_flags(participant_id)")


@migrations()
def add_site_leads(db: Database) -> None:
    """A therapist may lead their site: they see its flags that have no therapist yet."""
    db.execute("ALTER TABLE therapists ADD COLUMN site_lead INTEGER NOT NULL DEFAULT 0")
