"""Safety rules: checked in memory at a submission, kept as flags without the answers.

When a rule of the study definition fires, three things happen and nothing else: the
participant sees crisis help at once (the view's part), the study log records a
``safety-rule`` event with the rule and the timepoint, and a flag is kept for the
participant's therapist, or for the lead of their site while they have no therapist.
A flag names the rule, the timepoint and the day; the answers stay sealed. It goes
with the account, with "withdraw and erase", and on the study's erasure day.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.webapp.store import transaction
from stillroom.webapp.study import log
from stillroom.webapp.study.definition import SafetyRule, Study
from stillroom.webapp.study.questionnaires import Instrument, score


@dataclass(frozen=True)
class Flag:
    """A fired rule that a therapist has not marked seen yet."""

    pseudonym: str
    rule: str
    timepoint: str
    day: datetime.date
    site: str
    #: Whether the participant's course has a therapist who can see the flag.
    has_therapist: bool
    id: int


def fired(study: Study, instrument: Instrument | str, answers: dict[str, str]) -> list[SafetyRule]:
    """Return the study's rules on ``instrument`` that the complete answers fire, in order.

    :param instrument: the instrument (or its id) the answers are for.
    :raises questionnaires.AnswersError: for an unknown item or option, or a scored item
        left unanswered.
    """
    form = study.instruments[instrument] if isinstance(instrument, str) else instrument
    scores = score(form, answers)
    hits = []
    for rule in study.safety:
        if rule.instrument != form.id:
            continue
        if rule.score is not None:
            value = scores[rule.score]
        elif rule.item is not None and rule.item in answers:
            value = form.option_sets[form.item(rule.item).options].value(answers[rule.item])
        else:
            continue
        if value >= rule.at_least:
            hits.append(rule)
    return hits


def site_of(study: Study, stratum: str) -> str:
    """Return the site of a stratum (``<language>-<site>``)."""
    return {study.stratum_of(language): site for language, site in study.sites.items()}[stratum]


def record(
    db: Database,
    study: Study,
    participant_id: str,
    pseudonym: str,
    timepoint: str,
    rules: list[SafetyRule],
    day: datetime.date,
) -> None:
    """Inside the caller's write transaction: log each fired rule and keep a flag for it.

    The log row and the flag carry the rule's id and the timepoint only: which answer
    fired it stays in the sealed answers.
    """
    if not rules:
        return
    (stratum,) = db.execute(
        "SELECT stratum FROM study_participants WHERE participant_id = ?", [participant_id]
    ).fetchone()
    site = site_of(study, stratum)
    for rule in rules:
        log.append(db, "safety-rule", day, pseudonym, {"rule": rule.id, "timepoint": timepoint})
        db.table("safety_flags").insert(
            {
                "participant_id": participant_id,
                "pseudonym": pseudonym,
                "rule": rule.id,
                "timepoint": timepoint,
                "day": day.isoformat(),
                "site": site,
            }
        )


#: A course has a therapist only while that therapist can be booked (enrolled, enabled).
_HAS_THERAPIST = (
    "EXISTS (SELECT 1 FROM courses JOIN therapists ON therapists.id = courses.therapist_id"
    " WHERE courses.participant_id = safety_flags.participant_id"
    " AND therapists.disabled = 0 AND therapists.slot IS NOT NULL)"
)
_FLAG = f"SELECT pseudonym, rule, timepoint, day, site, {_HAS_THERAPIST}, id FROM safety_flags"  # noqa: S608


def _flags(db: Database, where: str, parameters: list[str]) -> list[Flag]:
    return [
        Flag(pseudonym, rule, timepoint, datetime.date.fromisoformat(day), site, bool(has), id_)
        for pseudonym, rule, timepoint, day, site, has, id_ in db.execute(
            f"{_FLAG} WHERE seen_day IS NULL {where} ORDER BY day, id",
            parameters,
        )
    ]


def open_flags(db: Database, site: str | None = None) -> list[Flag]:
    """Return the flags nobody has marked seen, oldest first (of one site, if given)."""
    return _flags(db, "AND site = ?", [site]) if site is not None else _flags(db, "", [])


def lead_list(db: Database, site: str) -> list[Flag]:
    """Return the site's open flags of participants who have no therapist yet."""
    return [flag for flag in open_flags(db, site) if not flag.has_therapist]


def therapist_flags(db: Database, therapist_id: str, participant_id: str) -> list[Flag]:
    """Return the participant's open flags when ``therapist_id`` is their course's therapist."""
    return _flags(
        db,
        "AND participant_id = ? AND EXISTS (SELECT 1 FROM courses WHERE"
        " courses.participant_id = safety_flags.participant_id AND courses.therapist_id = ?)",
        [participant_id, therapist_id],
    )


def mark_seen(
    db: Database, therapist_id: str, participant_id: str, flag_id: int, day: datetime.date
) -> bool:
    """Record the day the participant's therapist saw a flag; return whether it was theirs."""
    with transaction(db):
        if flag_id not in {flag.id for flag in therapist_flags(db, therapist_id, participant_id)}:
            return False
        db.execute("UPDATE safety_flags SET seen_day = ? WHERE id = ?", [day.isoformat(), flag_id])
    return True


def erase_flags(db: Database, participant_id: str) -> None:
    """Inside the caller's write transaction: delete the participant's flags (on erasure)."""
    db.execute("DELETE FROM safety_flags WHERE participant_id = ?", [participant_id])
