"""The CONSORT flow of a study, counted from its log alone (CONSORT 2025).

Every number is a query over the study log and the definition: there is no counter
that could drift from what happened. A participant is followed through the log by the
pseudonym their rows carry. Someone who withdrew and erased keeps being counted in
the boxes they reached (their old rows keep their old pseudonym), and counts as
withdrawn (erase); they are not analysed.

The boxes (``docs/research.md`` says the same for the study team):

- assessed for eligibility: an ``eligibility`` row (the screening was submitted);
- excluded, with one reason each, in this order: not eligible; eligible, then withdrew
  before randomisation (a ``withdrawal`` row, no allocation); eligible, not randomised
  otherwise (left before finishing the baseline, or still at it);
- randomised, and allocated to each arm: an ``allocation`` row;
- received the allocated intervention: one ``session-attended`` row or more;
- completed the course: at least the course's ``sessions_min`` sessions attended;
- each timepoint completed: an ``assessment-completed`` row for it (baseline included);
- withdrawn, each participant once, at the furthest level they chose (stop-sessions,
  then stop-questionnaires, then erase);
- lost to follow-up: allocated, never withdrawn, and the last timepoint on the calendar
  (the latest week not tied to a session) logged ``assessment-missed`` as ``missed``;
- analysed: randomised and not erased (intention to treat).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from stillroom.webapp.study import log
from stillroom.webapp.study.definition import Study

#: The reasons for exclusion before randomisation, in the order they are given.
NOT_ELIGIBLE = "not-eligible"
WITHDREW = "withdrew-before-randomisation"
LEFT = "left-before-randomisation"
EXCLUSIONS = (NOT_ELIGIBLE, WITHDREW, LEFT)
#: Withdrawal levels from the least to the furthest (the last one a participant chose counts).
LEVELS = ("stop-sessions", "stop-questionnaires", "erase")
#: Counts from 1 to this are shown as "<5" unless exact counts are asked for.
SMALL = 4
MASKED = "<5"
#: The total over all strata, next to each stratum.
TOTAL = "all"


@dataclass
class Enrolment:
    """The boxes before randomisation."""

    assessed: int = 0
    excluded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUSIONS, 0))
    randomised: int = 0


@dataclass
class ArmFlow:
    """The boxes of one arm, from allocation to analysis."""

    allocated: int = 0
    received: int = 0
    completed_course: int = 0
    timepoints: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    lost: int = 0
    analysed: int = 0


@dataclass
class Flow:
    """The whole flow of one stratum, or of all of them."""

    enrolment: Enrolment
    arms: dict[str, ArmFlow]


@dataclass
class Person:
    """What the log says about one pseudonym."""

    stratum: str | None = None
    eligible: bool | None = None
    arm: str | None = None
    withdrawals: set[str] = field(default_factory=set)
    sessions: int = 0
    completed: set[str] = field(default_factory=set)
    missed: dict[str, str] = field(default_factory=dict)


def read_people(db: Database) -> dict[str, Person]:
    """Follow every pseudonym through the log."""
    people: dict[str, Person] = {}
    for entry in log.entries(db):
        if entry.pseudonym is None:
            continue
        person = people.setdefault(entry.pseudonym, Person())
        detail = entry.detail
        if entry.event == "eligibility":
            person.eligible = bool(detail.get("eligible"))
            if person.stratum is None and isinstance(detail.get("stratum"), str):
                person.stratum = str(detail["stratum"])
        elif entry.event == "allocation":
            person.arm = str(detail["arm"])
            person.stratum = str(detail["stratum"])
        elif entry.event == "withdrawal":
            person.withdrawals.add(str(detail["level"]))
        elif entry.event == "session-attended":
            person.sessions += 1
        elif entry.event == "assessment-completed":
            person.completed.add(str(detail["timepoint"]))
        elif entry.event == "assessment-missed":
            person.missed[str(detail["timepoint"])] = str(detail["reason"])
    return people


def furthest_level(person: Person) -> str | None:
    """Return the furthest withdrawal level the person chose, if any."""
    chosen = [level for level in LEVELS if level in person.withdrawals]
    return chosen[-1] if chosen else None


def new_flow(study: Study) -> Flow:
    """Return a flow with every box of the study at zero."""
    return Flow(
        Enrolment(),
        {
            arm.id: ArmFlow(timepoints={timepoint.id: 0 for timepoint in study.schedule})
            for arm in study.arms
        },
    )


def count(db: Database, study: Study) -> dict[str, Flow]:
    """Return the flow of all strata (key :data:`TOTAL`) and of each stratum."""
    flows = {TOTAL: new_flow(study)} | {stratum: new_flow(study) for stratum in study.strata()}
    last = final_timepoint(study)
    for person in read_people(db).values():
        if person.eligible is None and person.arm is None:
            continue  # never screened: not assessed for eligibility
        places = [flows[TOTAL]]
        if person.stratum is not None:
            places.append(flows.setdefault(person.stratum, new_flow(study)))
        for flow in places:
            add_person(flow, person, study, last)
    return flows


def final_timepoint(study: Study) -> str:
    """Return the last timepoint on the calendar: the latest week not tied to a session.

    A session-tied timepoint may never be reached, so it cannot tell who was lost.
    """
    calendar = [point for point in study.schedule if point.after_session is None]
    return max(calendar, key=lambda point: point.week).id


def add_person(flow: Flow, person: Person, study: Study, last: str) -> None:
    """Count one person in every box of ``flow`` they reached."""
    enrolment = flow.enrolment
    enrolment.assessed += 1
    if person.arm is None:
        if not person.eligible:
            reason = NOT_ELIGIBLE
        elif person.withdrawals:
            reason = WITHDREW
        else:
            reason = LEFT
        enrolment.excluded[reason] += 1
        return
    enrolment.randomised += 1
    arm = flow.arms.setdefault(person.arm, ArmFlow())
    arm.allocated += 1
    arm.received += person.sessions >= 1
    arm.completed_course += person.sessions >= study.course.sessions_min
    for timepoint in person.completed:
        arm.timepoints[timepoint] = arm.timepoints.get(timepoint, 0) + 1
    level = furthest_level(person)
    if level is not None:
        arm.withdrawn[level] += 1
    elif person.missed.get(last) == "missed":
        arm.lost += 1
    arm.analysed += level != "erase"


@dataclass(frozen=True)
class Completion:
    """One timepoint of the schedule: how many answered it, missed it, or had withdrawn."""

    timepoint: str
    completed: int
    missed: int
    withdrawn: int

    @property
    def due(self) -> int:
        """Everyone the timepoint was due for so far: answered, or its window closed."""
        return self.completed + self.missed + self.withdrawn


def completion(db: Database, study: Study) -> list[Completion]:
    """Return, per timepoint, who completed it and whose window closed without an answer."""
    people = read_people(db).values()
    found = []
    for timepoint in study.schedule:
        reasons = Counter(person.missed.get(timepoint.id) for person in people)
        found.append(
            Completion(
                timepoint.id,
                sum(timepoint.id in person.completed for person in people),
                reasons["missed"],
                reasons["withdrawn"],
            )
        )
    return found


@dataclass(frozen=True)
class SafetyHit:
    """A safety rule that fired: the pseudonym, the rule and the day; never the answers."""

    pseudonym: str
    rule: str
    day: str


def safety_hits(db: Database) -> list[SafetyHit]:
    """Return every ``safety-rule`` row of the log, newest first."""
    return [
        SafetyHit(entry.pseudonym or "", str(entry.detail.get("rule")), entry.day)
        for entry in reversed(log.entries(db, "safety-rule"))
    ]


# --- Showing counts ----------------------------------------------------------------------


def shown(number: int, exact: bool = False) -> int | str:
    """Return a count as it may be shown: 1 to 4 become "<5" unless ``exact``.

    Zero stays 0: it is nobody, so it discloses nobody, and a box that says "<5"
    when it is empty would make every empty arm look as if someone were in it.
    """
    return MASKED if 0 < number <= SMALL and not exact else number


def rate(completed: int, due: int, exact: bool = False) -> str:
    """Return ``completed / due`` as a whole percentage, or "-" when it would unmask a count.

    A rate reveals both how many answered and how many did not; each of them must be
    shown as it stands, so a rate over a small count of either is not given.
    """
    if due == 0:
        return "-"
    if not exact and (shown(completed) == MASKED or shown(due - completed) == MASKED):
        return "-"
    return f"{round(100 * completed / due)}%"


def flow_as_dict(flow: Flow, exact: bool = False) -> dict[str, Any]:
    """Return one flow as plain values for JSON, masked unless ``exact``."""
    enrolment = flow.enrolment
    return {
        "assessed": shown(enrolment.assessed, exact),
        "excluded": shown(sum(enrolment.excluded.values()), exact),
        "excluded_reasons": {
            reason: shown(number, exact) for reason, number in enrolment.excluded.items()
        },
        "randomised": shown(enrolment.randomised, exact),
        "arms": {
            arm_id: {
                "allocated": shown(arm.allocated, exact),
                "received": shown(arm.received, exact),
                "completed_course": shown(arm.completed_course, exact),
                "timepoints_completed": {
                    timepoint: shown(number, exact) for timepoint, number in arm.timepoints.items()
                },
                "withdrawn": {
                    level: shown(number, exact) for level, number in arm.withdrawn.items()
                },
                "lost_to_follow_up": shown(arm.lost, exact),
                "analysed": shown(arm.analysed, exact),
            }
            for arm_id, arm in flow.arms.items()
        },
    }


def as_dict(study: Study, flows: dict[str, Flow], exact: bool = False) -> dict[str, Any]:
    """Return the whole flow as one JSON-ready object."""
    return {
        "study": study.id,
        "exact": exact,
        "total": flow_as_dict(flows[TOTAL], exact),
        "strata": {
            stratum: flow_as_dict(flow, exact)
            for stratum, flow in flows.items()
            if stratum != TOTAL
        },
    }


#: What each box is called, in English; the portal passes the same keys translated.
#: ``%(n)s`` is the count; ``%(arm)s``, ``%(timepoint)s`` and ``%(level)s`` are coded ids.
LABELS = {
    "enrolment": "Enrolment",
    "allocation": "Allocation",
    "follow-up": "Follow-up",
    "analysis": "Analysis",
    "assessed": "Assessed for eligibility (n=%(n)s)",
    "excluded": "Excluded (n=%(n)s)",
    NOT_ELIGIBLE: "Not eligible (n=%(n)s)",
    WITHDREW: "Withdrew before randomisation (n=%(n)s)",
    LEFT: "Eligible, not randomised (n=%(n)s)",
    "left-note": "(left, or still at the baseline)",
    "randomised": "Randomised (n=%(n)s)",
    "allocated": "Allocated to %(arm)s (n=%(n)s)",
    "received": "Received the allocated intervention (n=%(n)s)",
    "received-note": "(1 session or more)",
    "completed-course": "Completed the course (n=%(n)s)",
    "timepoint": "Completed %(timepoint)s (n=%(n)s)",
    "lost": "Lost to follow-up (n=%(n)s)",
    "withdrawn": "Withdrew: %(level)s (n=%(n)s)",
    "analysed": "Analysed (n=%(n)s)",
}


def rows_of(study: Study, values: dict[str, Any], labels: dict[str, str]) -> dict[str, list[str]]:
    """Return the text of each part of the flow: enrolment, then each arm's boxes."""
    reasons = values["excluded_reasons"]
    parts = {
        "assessed": [labels["assessed"] % {"n": values["assessed"]}],
        "excluded": [
            labels["excluded"] % {"n": values["excluded"]},
            *(f"- {labels[reason]}" % {"n": reasons[reason]} for reason in EXCLUSIONS),
            f"  {labels['left-note']}",
        ],
        "randomised": [labels["randomised"] % {"n": values["randomised"]}],
    }
    for arm in study.arms:
        counts = values["arms"].get(arm.id, {})
        done = counts.get("timepoints_completed", {})
        withdrawn = counts.get("withdrawn", {})
        parts[f"allocation:{arm.id}"] = [
            labels["allocated"] % {"arm": arm.id, "n": counts.get("allocated", 0)},
            labels["received"] % {"n": counts.get("received", 0)},
            f"  {labels['received-note']}",
            labels["completed-course"] % {"n": counts.get("completed_course", 0)},
        ]
        parts[f"follow-up:{arm.id}"] = [
            *(
                labels["timepoint"] % {"timepoint": tp.id, "n": done.get(tp.id, 0)}
                for tp in study.schedule
            ),
            labels["lost"] % {"n": counts.get("lost_to_follow_up", 0)},
            *(
                labels["withdrawn"]
                % {"level": labels.get(f"level:{level}", level), "n": withdrawn.get(level, 0)}
                for level in LEVELS
            ),
        ]
        parts[f"analysis:{arm.id}"] = [labels["analysed"] % {"n": counts.get("analysed", 0)}]
    return parts


#: Each row of the table: its label and how to read it from a flow's dictionary.
ENROLMENT_ROWS = (
    ("Assessed for eligibility", ("assessed",)),
    ("Excluded", ("excluded",)),
    ("  Not eligible", ("excluded_reasons", NOT_ELIGIBLE)),
    ("  Withdrew before randomisation", ("excluded_reasons", WITHDREW)),
    ("  Eligible, not randomised (left or still at baseline)", ("excluded_reasons", LEFT)),
    ("Randomised", ("randomised",)),
)


def arm_rows(study: Study) -> list[tuple[str, tuple[str, ...]]]:
    """Return the rows of one arm: allocation, follow-up, analysis."""
    rows: list[tuple[str, tuple[str, ...]]] = [
        ("Allocated", ("allocated",)),
        ("Received the allocated intervention (1+ sessions)", ("received",)),
        (f"Completed the course ({study.course.sessions_min}+ sessions)", ("completed_course",)),
    ]
    rows += [
        (f"Completed {timepoint.id}", ("timepoints_completed", timepoint.id))
        for timepoint in study.schedule
    ]
    rows += [(f"Withdrew: {level}", ("withdrawn", level)) for level in LEVELS]
    rows += [("Lost to follow-up", ("lost_to_follow_up",)), ("Analysed", ("analysed",))]
    return rows


def pick(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Return the value at ``path`` in nested dictionaries (0 where it is missing)."""
    found: Any = values
    for key in path:
        found = found.get(key, 0) if isinstance(found, dict) else 0
    return found


def table(study: Study, flows: dict[str, Flow], exact: bool = False) -> list[list[str]]:
    """Return the flow as rows of cells: the box, then all strata, then each stratum."""
    values = as_dict(study, flows, exact)
    columns = [values["total"], *values["strata"].values()]
    rows = [["", TOTAL, *values["strata"]]]
    rows += [[label, *(str(pick(c, path)) for c in columns)] for label, path in ENROLMENT_ROWS]
    for arm in study.arms:
        rows.append([f"Arm {arm.id}", *([""] * len(columns))])
        rows += [
            [f"  {label}", *(str(pick(c, ("arms", arm.id, *path))) for c in columns)]
            for label, path in arm_rows(study)
        ]
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Return rows of cells as plain text, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
