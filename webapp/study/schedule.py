"""The assessment schedule: each timepoint's window for a participant, and its state.

A window is counted from the day of randomisation (the allocation's day): the same in
every arm, and unchanged by a crossover. A timepoint with ``after_session = N`` is
counted from the day of the participant's Nth attended session instead, and is not due
before that session happened. Whether a timepoint was answered, missed or left after a
withdrawal is read from the study log, so there is no counter to drift, and a window
that closed without an answer is written to the log as missed, never dropped.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field, replace

from sqlite_utils import Database

from stillroom.webapp.store import transaction
from stillroom.webapp.study import log
from stillroom.webapp.study.definition import Study, Timepoint

#: The states of a timepoint for one participant.
UPCOMING = "upcoming"
OPEN = "open"
COMPLETED = "completed"
MISSED = "missed"
WITHDRAWN = "withdrawn"
#: A session-tied timepoint whose session has not happened (and may never).
NOT_REACHED = "not-reached"

#: The withdrawal levels that stop questionnaires (intake's stop-questionnaires and erase).
STOPS_QUESTIONNAIRES = ("stop-questionnaires", "erase")
ERASE = "erase"


@dataclass(frozen=True)
class Window:
    """A timepoint's days for one participant (``None`` before its session) and its state."""

    timepoint: Timepoint
    opens: datetime.date | None
    closes: datetime.date | None
    state: str


@dataclass(frozen=True)
class Due:
    """The assessment a participant is asked for now."""

    timepoint: str
    instrument: str
    #: The last day it can be answered on (a whole UTC day).
    last_day: datetime.date
    minutes: int
    #: For a timepoint tied to a session: that session's number.
    after_session: int | None


@dataclass
class History:
    """What the study log and the allocation say about one participant's schedule."""

    randomised: datetime.date
    #: The day of each attended session, by its number.
    sessions: dict[int, datetime.date] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)
    #: The timepoints logged as missed, with the reason logged ("missed" or "withdrawn").
    missed: dict[str, str] = field(default_factory=dict)
    #: The day the participant stopped questionnaires, if they did.
    stopped: datetime.date | None = None
    erased: bool = False


def histories(db: Database, pseudonym: str | None = None) -> dict[str, History]:
    """Return the history of every allocated participant (or of one), by pseudonym.

    One pass over the log, so that the maintenance pass reads it once, not once per
    participant.
    """
    args = [pseudonym, pseudonym]
    found = {
        str(name): History(datetime.date.fromisoformat(day))
        for name, day in db.execute(
            "SELECT pseudonym, day FROM allocations WHERE ? IS NULL OR pseudonym = ?", args
        )
    }
    rows = db.execute(
        "SELECT pseudonym, day, event, detail FROM study_log WHERE event IN"
        " ('session-attended', 'assessment-completed', 'assessment-missed', 'withdrawal')"
        " AND (? IS NULL OR pseudonym = ?) ORDER BY seq",
        args,
    )
    for name, day, event, detail_json in rows:
        history = found.get(name)
        if history is None:
            continue
        detail = json.loads(detail_json)
        on = datetime.date.fromisoformat(day)
        if event == "session-attended":
            history.sessions.setdefault(int(detail["session"]), on)
        elif event == "assessment-completed":
            history.completed.add(str(detail["timepoint"]))
        elif event == "assessment-missed":
            history.missed.setdefault(str(detail["timepoint"]), str(detail["reason"]))
        elif detail.get("level") in STOPS_QUESTIONNAIRES:
            history.stopped = on if history.stopped is None else history.stopped
            history.erased = history.erased or detail["level"] == ERASE
    return found


def plan(study: Study, history: History, day: datetime.date) -> list[Window]:
    """Return every timepoint's window and its state on ``day``, in the definition's order."""
    # Only sending the baseline allocates, so whoever has a history answered it, even
    # if they were randomised before the baseline was logged as completed.
    history = replace(history, completed=history.completed | {study.schedule[0].id})
    windows = []
    for point in study.schedule:
        anchor: datetime.date | None = history.randomised
        if point.after_session is not None:
            anchor = history.sessions.get(point.after_session)
        if anchor is None:
            windows.append(Window(point, None, None, state_of(point, None, None, history, day)))
            continue
        anchor += datetime.timedelta(weeks=point.week)
        opens = anchor + datetime.timedelta(days=point.opens_days)
        closes = anchor + datetime.timedelta(days=point.closes_days)
        windows.append(Window(point, opens, closes, state_of(point, opens, closes, history, day)))
    return windows


def state_of(
    point: Timepoint,
    opens: datetime.date | None,
    closes: datetime.date | None,
    history: History,
    day: datetime.date,
) -> str:
    """Return the state of one timepoint on ``day``; what the log says comes first."""
    if point.id in history.completed:
        return COMPLETED
    if point.id in history.missed:
        return history.missed[point.id]
    if opens is None or closes is None:
        return NOT_REACHED
    if history.stopped is not None and history.stopped <= closes:
        return WITHDRAWN
    if day < opens:
        return UPCOMING
    return OPEN if day <= closes else MISSED


def windows(db: Database, study: Study, pseudonym: str, day: datetime.date) -> list[Window]:
    """Return the participant's windows on ``day`` (none before their allocation)."""
    history = histories(db, pseudonym).get(pseudonym)
    return [] if history is None else plan(study, history, day)


def due(db: Database, study: Study, participant_id: str, day: datetime.date) -> Due | None:
    """Return the assessment the participant is asked for on ``day``, or ``None``.

    Among the open timepoints not answered yet, the one already begun comes first (so
    that a saved page is never lost to another form), then the one that closes first.
    The baseline is never due here: intake asks for it, before allocation.
    """
    row = db.execute(
        "SELECT pseudonym, draft_form FROM study_participants"
        " WHERE participant_id = ? AND erased = 0 AND questionnaires_stopped = 0",
        [participant_id],
    ).fetchone()
    if row is None:
        return None
    pseudonym, begun = row
    history = histories(db, pseudonym).get(pseudonym)
    if history is None:
        return None
    baseline = study.schedule[0].id
    candidates = [
        window
        for window in plan(study, history, day)
        if window.state == OPEN and window.timepoint.id != baseline
    ]
    if not candidates:
        return None
    first = min(candidates, key=lambda window: (window.timepoint.id != begun, window.closes))
    assert first.closes is not None
    point = first.timepoint
    return Due(
        point.id,
        point.instrument,
        first.closes,
        study.instruments[point.instrument].minutes,
        point.after_session,
    )


def record_missed(
    db: Database, study: Study, day: datetime.date, pseudonym: str | None = None
) -> int:
    """Log every window that has closed without an answer, once; return how many.

    Each row is dated the first day its window was closed, whenever it is logged. The
    reason is "withdrawn" when questionnaires had stopped before the window closed,
    else "missed". Someone who withdrew and erased gets no more rows. A draft of the
    closed form goes with it: it can no longer be sent.

    :param pseudonym: only this participant's (a page view); all of them by default.
    """
    logged = 0
    for name, history in histories(db, pseudonym).items():
        if history.erased:
            continue
        for window in plan(study, history, day):
            if window.state not in (MISSED, WITHDRAWN) or window.timepoint.id in history.missed:
                continue
            if window.closes is None or window.closes >= day:
                continue  # withdrawn, but the window is still running: logged when it closes
            with transaction(db):
                logged += _log_missed(db, name, window)
    return logged


def _log_missed(db: Database, pseudonym: str, window: Window) -> int:
    """Inside a write transaction: log one closed window, unless another process just did."""
    point = window.timepoint
    assert window.closes is not None
    already = db.execute(
        "SELECT 1 FROM study_log WHERE event = 'assessment-missed' AND pseudonym = ?"
        " AND json_extract(detail, '$.timepoint') = ?",
        [pseudonym, point.id],
    ).fetchone()
    if already is not None:
        return 0
    first_closed = window.closes + datetime.timedelta(days=1)
    log.append(
        db,
        "assessment-missed",
        first_closed,
        pseudonym,
        {"timepoint": point.id, "reason": window.state},
    )
    db.execute(
        "UPDATE study_participants SET draft_form = NULL, draft = NULL"
        " WHERE pseudonym = ? AND draft_form = ?",
        [pseudonym, point.id],
    )
    return 1
