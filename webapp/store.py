"""The SQLite store: one file, opened with the same safety pragmas every time.

No ORM: sqlite-utils for schema changes and convenience, plain SQL where it reads
better. Writers take the lock up front (``BEGIN IMMEDIATE``) so that two requests
never deadlock upgrading a read lock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

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
    """Run a block as one write transaction that holds the write lock from the start."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def migrate(path: Path) -> None:
    """Create or upgrade the database at ``path`` and make it private to the owner."""
    db = connect(path)
    try:
        migrations.apply(db)
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        sibling = Path(f"{path}{suffix}")
        if sibling.exists():
            sibling.chmod(0o600)


def checkpoint(db: Database, attempts: int = 3) -> bool:
    """Fold the write-ahead log into the main file and truncate it.

    Without this, deleted rows survive in the ``-wal`` file until the next
    automatic checkpoint. A reader holding an old snapshot blocks the truncation;
    then this gives up quickly (a request must not hang) and the purge that runs
    every minute truncates it later.

    :returns: whether the log was truncated.
    """
    db.execute("PRAGMA busy_timeout=100")
    try:
        for _ in range(attempts):
            if not db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                return True
            time.sleep(0.1)
    finally:
        db.execute(f"PRAGMA busy_timeout={dict(PRAGMAS)['busy_timeout']}")
    log.warning("write-ahead log busy; the next purge truncates it")
    return False
