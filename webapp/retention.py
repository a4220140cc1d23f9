"""Retention: remove what has outlived its purpose, at startup and every minute.

Today that is expired sessions; the retention issue adds every other table.
Each run ends with a write-ahead-log checkpoint so deleted rows leave the
``-wal`` file too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from stillroom.webapp.sessions import end_expired_sessions
from stillroom.webapp.store import checkpoint, connect

log = logging.getLogger(__name__)


def purge(db: Database, now: int) -> int:
    """Delete everything past its retention; return how many rows went."""
    removed = end_expired_sessions(db, now)
    checkpoint(db)  # if readers block it, the next run retries; the rows are gone already
    return removed


def start_periodic_purge(
    path: Path, interval: float = 60, clock: Callable[[], float] = time.time
) -> threading.Event:
    """Run :func:`purge` every ``interval`` seconds in a daemon thread.

    :returns: an event that stops the thread when set.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            db = connect(path)
            try:
                purge(db, int(clock()))
            except Exception as error:  # keep purging; report without any data
                log.error("purge failed: %s", type(error).__name__)
            finally:
                db.close()

    threading.Thread(target=loop, name="purge", daemon=True).start()
    return stop
