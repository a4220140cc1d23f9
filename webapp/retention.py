"""Retention: remove what has outlived its purpose, at startup and every minute.

Key slots that no row names any more (a crash between a deletion and its slot's
destruction leaves one: looked for at start-up and by ``stillroom purge``), accounts
unused for ``ACCOUNT_RETENTION_DAYS``, expired sessions of both apps, enrolment links
that were never used, failed-login counts that have run out, the keys of message days
that have come and those days' messages, conversations nobody needs, slots that have
ended, appointments past their retention, therapists' notes unchanged for
``NOTE_RETENTION_DAYS`` and proposed next times that have begun or were taken. The
same pass counts the course sessions that are over and, in a study, logs the
crossovers of waitlists that have ended and the assessments whose windows closed
unanswered. On a study's erasure day (its last day plus
``retention_days_after_end``), the study's research data goes for good, and with it
the notes about its participants. Every deleted key slot is overwritten in
place; each run ends with a write-ahead-log checkpoint so deleted rows leave the
``-wal`` file too.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from stillroom.webapp.accounts import purge_unused_accounts
from stillroom.webapp.booking import purge_bookings
from stillroom.webapp.chat import purge_chats
from stillroom.webapp.instance import with_reserve
from stillroom.webapp.keyslots import destroy_orphans, destroy_slots, doomed
from stillroom.webapp.notes import delete_study_notes, purge_notes
from stillroom.webapp.sessions import end_expired_sessions
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import StoreUnwritableError, checkpoint, connect, transaction
from stillroom.webapp.study.amendment import StudyChangedError, check_unchanged
from stillroom.webapp.study.course import count_sessions, cross_over_due, purge_proposals
from stillroom.webapp.study.definition import Study, load_study
from stillroom.webapp.study.schedule import record_missed
from stillroom.webapp.therapists import forget_old_failures

log = logging.getLogger(__name__)


def purge(db: Database, now: int, settings: Settings, orphans: bool = True) -> int:
    """Delete everything past its retention; return how many rows went.

    On a full disk it runs on the data directory's reserve (:func:`with_reserve`).

    :param orphans: also destroy key slots that no row names (left only by a process that
        died between a deletion and its slots' destruction: the purge at start-up, or
        ``stillroom purge``, finds them; the one every minute need not read every slot).

    :raises StoreUnwritableError: when the database cannot be written even so.
    """
    return with_reserve(settings, lambda: _delete_expired(db, now, settings, orphans))


def _delete_expired(db: Database, now: int, settings: Settings, orphans: bool) -> int:
    """The purge's deletions, then the checkpoint that clears them from the log."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
    removed = 0
    if orphans:
        with transaction(db):
            removed = destroy_orphans(db)
    removed += purge_unused_accounts(db, today, settings.account_retention_days)
    removed += end_expired_sessions(db, now)
    with transaction(db):
        removed += db.execute("DELETE FROM enrolments WHERE expires_at <= ?", [now]).rowcount
    removed += forget_old_failures(db, now)
    # Before appointments go: a session is counted from which sides wrote in it.
    study = running_study(settings)
    try:
        if study is not None:
            check_unchanged(db, study)
    except StudyChangedError:
        pass  # nothing is logged under rules no amendment logged; the deletions go on
    else:
        count_sessions(db, now, study)
        if study is not None:
            cross_over_due(db, now, study)
            record_missed(db, study, datetime.date.fromisoformat(today))
    removed += purge_chats(db, now, settings.chat_opens_minutes_before)
    removed += purge_bookings(db, now, settings.appointment_retention_days * 24 * 3600)
    removed += purge_notes(db, now, settings.note_retention_days)
    removed += purge_proposals(db, now)
    removed += erase_study(db, today)
    checkpoint(db, strict=True)  # readers blocking it: the next run retries; a full disk: raise
    return removed


@functools.cache
def _study_at(folder: str) -> Study:
    return load_study(Path(folder))  # checked when the apps started; read once per process


def running_study(settings: Settings) -> Study | None:
    """Return the study this deployment runs, or ``None`` in open mode."""
    return _study_at(settings.study) if settings.study else None


#: The research data of a study, in the order its foreign keys allow deleting it.
RESEARCH_TABLES = (
    "safety_flags",
    "study_answers",
    "study_consents",
    "study_participants",
    "allocations",
    "allocation_lists",
    "study_log",
)


def erase_study(db: Database, today: str) -> int:
    """On or after the study's erasure day: erase its research data; return how many rows went.

    The safety flags, answers, consents, pseudonyms, allocations, allocation lists and
    the study log go, with the notes about its participants; the research slots and the lists' slots
    are overwritten, so no copy of them opens. Only the ``study`` row stays, marked with
    the day, so that the audit and the apps know the study ran and is gone. The
    triggers that keep the log and the allocations append-only are dropped for the
    deletion and made again, all in one transaction.
    """
    with transaction(db):
        due = db.execute(
            "SELECT 1 FROM study WHERE erased_day IS NULL AND erase_day <= ?", [today]
        ).fetchone()
        if due is None:
            return 0
        slots = delete_study_notes(db)
        removed = len(slots)  # one slot per note
        slots += [
            int(row[0])
            for row in db.execute(
                "SELECT slot FROM study_participants WHERE slot IS NOT NULL"
                " UNION ALL SELECT slot FROM allocation_lists"
            )
        ]
        triggers = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            " AND tbl_name IN ('study_log', 'allocations')"
        ).fetchall()
        for name, _ in triggers:
            db.execute(f'DROP TRIGGER "{name}"')
        for table in RESEARCH_TABLES:
            removed += db.execute(f"DELETE FROM {table}").rowcount  # noqa: S608
        for _, sql in triggers:
            db.execute(sql)
        db.execute("UPDATE study SET erased_day = ?", [today])
        gone = doomed(db, slots)
    destroy_slots(db, gone)
    return removed


def start_periodic_purge(
    settings: Settings, interval: float = 60, clock: Callable[[], float] = time.time
) -> threading.Event:
    """Run :func:`purge` every ``interval`` seconds in a daemon thread.

    :returns: an event that stops the thread when set.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                db = connect(settings.database_path)
            except Exception as error:  # keep trying every minute
                log.error("purge could not open the database: %s", type(error).__name__)
                continue
            try:
                purge(db, int(clock()), settings, orphans=False)
            except StoreUnwritableError as problem:
                problem.report()
            except Exception as error:  # keep purging; report without any data
                log.error("purge failed: %s", type(error).__name__)
            finally:
                db.close()

    threading.Thread(target=loop, name="purge", daemon=True).start()
    return stop
