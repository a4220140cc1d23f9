"""A started study's rules stay as they were, or change only through a logged amendment.

``study start`` records a fingerprint of the whole study folder, and one of the part the
allocation lists were made from (study, strata, arms and their ratios, block sizes, list
length). The apps refuse to run a folder whose fingerprint is not the recorded one; the
study team runs ``stillroom study amend`` instead, which logs the change (and a new
consent version) in the study log. A change to the allocation part is refused: the
committed lists were made for it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta
from pathlib import Path

from sqlite_utils import Database

from stillroom.webapp.store import transaction
from stillroom.webapp.study import allocation, log
from stillroom.webapp.study.definition import Study


class StudyChangedError(Exception):
    """The study folder differs from the one started (or last amended)."""


class AmendmentError(Exception):
    """The amendment cannot be taken: the message says why."""


def allocation_sha256(study: Study) -> str:
    """Return a fingerprint of what the allocation lists were made from."""
    core = {
        "id": study.id,
        "strata": study.strata(),
        # What each arm gets is part of it: an amendment must not open the waitlist arm.
        "arms": [[arm.id, arm.ratio, arm.gets, arm.waitlist_weeks] for arm in study.arms],
        "block_sizes": list(study.block_sizes),
        "participants_per_stratum": study.participants_per_stratum,
    }
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def erase_day(study: Study) -> date:
    """Return the day the study's research data is erased: its last day plus its retention."""
    return study.ends + timedelta(days=study.retention_days_after_end)


def start(
    db: Database,
    data_dir: Path,
    study: Study,
    day: date,
    keys: tuple[bytes, bytes],
    participants_per_stratum: int | None = None,
) -> dict[str, str]:
    """Start ``study`` as ``stillroom study start`` does: its lists, log and fingerprints.

    :param keys: the study team's and the statistician's X25519 public keys.
    :param participants_per_stratum: lists for this many instead of the definition's
        (shorter lists for tests).
    :returns: ``{stratum: commitment hex}``, to publish.
    """
    return allocation.start_study(
        db,
        data_dir,
        study.id,
        study.sha256,
        day,
        keys,
        study.strata(),
        [(arm.id, arm.ratio) for arm in study.arms],
        list(study.block_sizes),
        participants_per_stratum or study.participants_per_stratum,
        allocation_sha256(study),
        lambda started: record_start(started, study),  # all of the start, or none of it
    )


def record_start(db: Database, study: Study) -> None:
    """Keep, beside the started study, its allocation fingerprint, consent version and days."""
    db.execute(
        "UPDATE study SET allocation_sha256 = ?, consent_version = ?, last_day = ?, erase_day = ?",
        [
            allocation_sha256(study),
            study.consent_current,
            study.ends.isoformat(),
            erase_day(study).isoformat(),
        ],
    )


def logged_rules(db: Database) -> tuple[str | None, str | None]:
    """Return the definition and allocation fingerprints the study log holds now.

    The log is the record: a column of the ``study`` table can be changed without a
    trace, a row of the hash-chained log cannot (``stillroom study verify``).
    """
    rules = sorted(log.entries(db, "start") + log.entries(db, "amendment"), key=lambda e: e.seq)
    if not rules:
        return None, None
    allocation = rules[0].detail.get("allocation") if rules[0].event == "start" else None
    definition = rules[-1].detail.get("definition")
    return str(definition) if definition else None, str(allocation) if allocation else None


def check_unchanged(db: Database, study: Study) -> None:
    """Refuse a study folder that is not the one started or last amended.

    :raises StudyChangedError: naming the command that logs the change.
    """
    row = db.execute("SELECT id, definition_sha256 FROM study").fetchone()
    if row is None:
        return  # not started yet: the folder may still change freely
    if row[0] != study.id:
        raise StudyChangedError(
            f"this data directory runs the study {row[0]!r}, not {study.id!r}"
            " (STILLROOM_STUDY names another study)"
        )
    in_log, _ = logged_rules(db)
    if (in_log or row[1]) != study.sha256:
        raise StudyChangedError(
            f"the study folder {study.folder} has changed since the study started or was"
            " last amended: log the change with 'stillroom study amend', or put the folder"
            " back as it was"
        )


def amend(db: Database, study: Study, day: date) -> list[str]:
    """Take the changed folder ``study`` as the study's rules from now on, and log it.

    :returns: what was logged, one line each, for the study team.
    :raises AmendmentError: when no study runs, nothing changed, or the allocation
        part changed.
    """
    with transaction(db):
        row = db.execute(
            "SELECT id, definition_sha256, allocation_sha256, consent_version, erased_day"
            " FROM study"
        ).fetchone()
        if row is None:
            raise AmendmentError("no study has been started here ('stillroom study start')")
        started_id, previous, allocation, consent_version, erased = row
        in_log, allocation_in_log = logged_rules(db)
        previous, allocation = in_log or previous, allocation_in_log or allocation
        if started_id != study.id:
            raise AmendmentError(f"this data directory runs the study {started_id!r}")
        if erased is not None:
            raise AmendmentError(f"the study's research data was erased on {erased}: it is over")
        if previous == study.sha256:
            raise AmendmentError("the study folder is unchanged: there is nothing to amend")
        if allocation is None:
            raise AmendmentError(
                "the study's start logged no fingerprint of what its allocation lists were"
                " made from, so no amendment can be checked against it"
            )
        if allocation != allocation_sha256(study):
            raise AmendmentError(
                "the strata, arms (their ratios, what they get, their waiting), block sizes or"
                " list length changed: the committed"
                " allocation lists were made for the old ones, so this cannot be amended"
            )
        log.append(
            db,
            "amendment",
            day,
            None,
            {
                "definition": study.sha256,
                "previous": previous,
                # The days may move with the amendment; the log keeps the ones now in force.
                "last-day": study.ends.isoformat(),
                "erase-day": erase_day(study).isoformat(),
            },
        )
        logged = [
            f"amendment: definition {study.sha256}, last day {study.ends},"
            f" research data erased on {erase_day(study)}"
        ]
        if consent_version != study.consent_current:
            kind = study.consent().kind
            log.append(
                db,
                "consent-version",
                day,
                None,
                {"version": study.consent_current, "kind": kind},
            )
            logged.append(f"consent-version: {study.consent_current} ({kind})")
        db.execute(
            "UPDATE study SET definition_sha256 = ?, consent_version = ?, last_day = ?,"
            " erase_day = ?",
            [
                study.sha256,
                study.consent_current,
                study.ends.isoformat(),
                erase_day(study).isoformat(),
            ],
        )
    return logged
