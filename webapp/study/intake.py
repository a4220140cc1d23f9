"""Intake into a study: information, consent, screening, baseline, allocation; withdrawal.

A participant in a study has one row in ``study_participants``: a random pseudonym
(the only id study data carries), their stratum, a research-data key slot, the step of
intake they are at and the consent version they agreed to. Answers are sealed to the
study team's key at submission and locked again under the research slot, so that
"withdraw and erase" (destroying the slot) leaves nothing on the disk that opens, even
with the study key. Every step that matters to the trial is written to the study log,
with days only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.crypto.box import UnsealError, open_sealed, seal
from stillroom.crypto.keys import UnwrapError
from stillroom.webapp.keyslots import (
    SlotGoneError,
    destroy_slots,
    doomed,
    lock,
    new_slot,
    unlock,
)
from stillroom.webapp.store import checkpoint, transaction
from stillroom.webapp.study import log, safety, schedule
from stillroom.webapp.study.allocation import allocate
from stillroom.webapp.study.definition import CONSENT_ITEMS, Study
from stillroom.webapp.study.questionnaires import (
    SEALED_BLOCK_BYTES,
    Instrument,
    Item,
    canonical_answers,
    check_answers,
    pages,
    score,
    seal_answers,
)

#: The steps of intake, in order; ``ineligible`` ends it early.
INFORMATION = "information"
CONSENT = "consent"
SCREENING = "screening"
BASELINE = "baseline"
DONE = "done"
INELIGIBLE = "ineligible"
#: After "withdraw and erase", whatever step they were at: the row must not say whether
#: they were found eligible.
WITHDRAWN = "withdrawn"
STEPS = (INFORMATION, CONSENT, SCREENING, BASELINE, DONE, INELIGIBLE, WITHDRAWN)

#: The three levels of withdrawal (issue 16, point 11).
STOP_SESSIONS = "stop-sessions"
STOP_QUESTIONNAIRES = "stop-questionnaires"
ERASE = "erase"
WITHDRAWALS = (STOP_SESSIONS, STOP_QUESTIONNAIRES, ERASE)


class IntakeError(Exception):
    """Base class of the intake errors."""


class WrongStepError(IntakeError):
    """The participant is not at the step this action belongs to (a form sent twice)."""


class ConsentMissingError(IntakeError):
    """A required consent item was not ticked."""


class ConsentTextChangedError(IntakeError):
    """The consent text sent back is not the one that would be recorded now (a new
    version, or another language): consent is only ever recorded for the text shown."""


class AnswersMissingError(IntakeError):
    """An item of the page was left unanswered; ``items`` names them."""

    def __init__(self, items: list[str]) -> None:
        super().__init__(", ".join(items))
        self.items = items


class ErasedError(IntakeError):
    """The participant withdrew and erased their research data; nothing more is stored."""


class WindowClosedError(IntakeError):
    """The assessment's window closed before the form was sent: it is recorded as missed."""


@dataclass(frozen=True)
class Enrolment:
    """A participant's place in the study, as ``study_participants`` holds it."""

    participant_id: str
    pseudonym: str
    stratum: str
    slot: int | None
    step: str
    consent_version: str | None
    draft_form: str | None
    draft: bytes | None
    sessions_stopped: bool
    questionnaires_stopped: bool
    erased: bool


@dataclass(frozen=True)
class Receipt:
    """What a consent gave back: its version and the code shown to the participant."""

    version: str
    code: str


def running(db: Database) -> bool:
    """Return whether a study was started in this data directory."""
    return db.execute("SELECT 1 FROM study").fetchone() is not None


def over(db: Database, day: datetime.date) -> bool:
    """Return whether the study's last day has passed (or its data is erased): no new intake.

    The last day is a whole day of the study: an intake finished on it ends in an
    allocation; one left unfinished stops there, and is never allocated.
    """
    row = db.execute("SELECT last_day, erased_day FROM study").fetchone()
    if row is None:
        return False
    last_day, erased_day = row
    return erased_day is not None or (last_day is not None and day.isoformat() > last_day)


def outside_study(db: Database, participant_id: str, day: datetime.date) -> bool:
    """Return whether the ended study leaves this participant to the open service.

    Everyone but those allocated, who keep their course: new accounts, and intakes left
    unfinished (or ineligible) when the study ended.
    """
    if not over(db, day):
        return False
    row = db.execute(
        "SELECT step FROM study_participants WHERE participant_id = ?", [participant_id]
    ).fetchone()
    return row is None or row[0] != DONE


def study_public_key(db: Database) -> bytes:
    """Return the study team's public key, stored by ``study start``."""
    (key,) = db.execute("SELECT study_public_key FROM study").fetchone()
    return bytes(key)


_COLUMNS = (
    "participant_id, pseudonym, stratum, slot, step, consent_version, draft_form, draft,"
    " sessions_stopped, questionnaires_stopped, erased"
)


def enrolment(db: Database, participant_id: str) -> Enrolment | None:
    """Return the participant's place in the study, or ``None`` before intake began."""
    row = db.execute(
        f"SELECT {_COLUMNS} FROM study_participants WHERE participant_id = ?",  # noqa: S608
        [participant_id],
    ).fetchone()
    if row is None:
        return None
    (pid, pseudonym, stratum, slot, step, version, draft_form, draft, sessions, forms, erased) = row
    return Enrolment(
        pid,
        pseudonym,
        stratum,
        slot,
        step,
        version,
        draft_form,
        None if draft is None else bytes(draft),
        bool(sessions),
        bool(forms),
        bool(erased),
    )


def enrol(db: Database, participant_id: str, stratum: str) -> Enrolment:
    """Give the participant a pseudonym and a research slot, once; return their enrolment."""
    with transaction(db):
        if enrolment(db, participant_id) is None:
            db.table("study_participants").insert(
                {
                    "participant_id": participant_id,
                    # 80 random bits: unguessable, and not derived from anything about them.
                    "pseudonym": secrets.token_hex(10),
                    "stratum": stratum,
                    "slot": new_slot(db),
                    "step": INFORMATION,
                }
            )
    found = enrolment(db, participant_id)
    assert found is not None
    return found


def _set_step(db: Database, participant_id: str, expected: str, step: str) -> None:
    """Inside a write transaction: move from ``expected`` to ``step``, or refuse."""
    changed = db.execute(
        "UPDATE study_participants SET step = ? WHERE participant_id = ? AND step = ?",
        [step, participant_id, expected],
    )
    if changed.rowcount != 1:
        raise WrongStepError(expected)


def read_information(db: Database, participant_id: str) -> None:
    """The participant has read the information page: consent comes next.

    :raises WrongStepError: when they are past it.
    """
    with transaction(db):
        _set_step(db, participant_id, INFORMATION, CONSENT)


# --- Consent --------------------------------------------------------------------------


def receipt_code(pseudonym: str, version: str, text_sha256: str, items: str, day: str) -> str:
    """Return the short code a participant keeps for a consent: 8 characters of its hash."""
    record = json.dumps([pseudonym, version, text_sha256, items, day], separators=(",", ":"))
    digest = hashlib.sha256(record.encode()).digest()
    letters = base64.b32encode(digest).decode()[:8]
    return f"{letters[:4]}-{letters[4:]}"


def _version_index(study: Study, version: str | None) -> int:
    names = [item.version for item in study.consent_versions]
    return names.index(version) if version in names else -1


def required_version(study: Study) -> str:
    """Return the latest major version up to the current one: everyone must have agreed to it."""
    current = _version_index(study, study.consent_current)
    majors = [
        item.version for item in study.consent_versions[: current + 1] if item.kind == "major"
    ]
    return majors[-1] if majors else study.consent_current


def needs_consent_again(study: Study, found: Enrolment) -> bool:
    """Return whether a new major version asks this participant for consent again."""
    if found.consent_version is None or found.erased:
        return False
    return _version_index(study, found.consent_version) < _version_index(
        study, required_version(study)
    )


def has_minor_news(study: Study, found: Enrolment) -> bool:
    """Return whether a newer minor version exists that the participant has not read yet."""
    if found.consent_version is None or found.erased or needs_consent_again(study, found):
        return False
    return found.consent_version != study.consent_current


def give_consent(
    db: Database,
    study: Study,
    participant_id: str,
    language: str,
    ticked: set[str],
    day: datetime.date,
    shown: tuple[str, str],
) -> Receipt:
    """Record consent to the current version as shown in ``language``; return its receipt.

    At intake this moves on to screening; asked again after a major version, the
    participant stays where they were. Only the choice of the optional items is recorded.

    :param shown: the version and the SHA-256 of the text the participant was shown.
    :raises ConsentTextChangedError: when ``shown`` is not the current version's text
        in ``language``.
    :raises ConsentMissingError: when a required item is not ticked.
    :raises WrongStepError: when no consent is asked of this participant now.
    """
    version = study.consent(study.consent_current)
    text = version.texts[language]
    if shown != (version.version, text.sha256):
        raise ConsentTextChangedError(f"{shown[0]} is not {version.version}")
    missing = [item for item, required in CONSENT_ITEMS.items() if required and item not in ticked]
    if missing:
        raise ConsentMissingError(", ".join(missing))
    chosen = ",".join(item for item in CONSENT_ITEMS if item in ticked)
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None or found.erased:
            raise WrongStepError(CONSENT)
        again = needs_consent_again(study, found)
        if found.step == CONSENT:
            _set_step(db, participant_id, CONSENT, SCREENING)
        elif not again:
            raise WrongStepError(CONSENT)
        code = receipt_code(found.pseudonym, version.version, text.sha256, chosen, day.isoformat())
        db.execute(
            "INSERT OR REPLACE INTO study_consents"
            " (pseudonym, version, text_sha256, items, day, receipt) VALUES (?, ?, ?, ?, ?, ?)",
            [found.pseudonym, version.version, text.sha256, chosen, day.isoformat(), code],
        )
        db.execute(
            "UPDATE study_participants SET consent_version = ? WHERE participant_id = ?",
            [version.version, participant_id],
        )
        detail: log.Detail = {"version": version.version, "text": text.sha256, "receipt": code}
        detail.update({item: item in ticked for item in CONSENT_ITEMS})
        log.append(db, "consent", day, found.pseudonym, detail)
        if again:
            log.append(
                db,
                "consent-version",
                day,
                found.pseudonym,
                {"from": found.consent_version, "to": version.version, "kind": "major"},
            )
    return Receipt(version.version, code)


def read_minor_version(db: Database, study: Study, participant_id: str, day: datetime.date) -> None:
    """The participant has read a newer minor version: it becomes theirs, and it is logged."""
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None or not has_minor_news(study, found):
            return
        db.execute(
            "UPDATE study_participants SET consent_version = ? WHERE participant_id = ?",
            [study.consent_current, participant_id],
        )
        log.append(
            db,
            "consent-version",
            day,
            found.pseudonym,
            {"from": found.consent_version, "to": study.consent_current, "kind": "minor"},
        )


def consent_receipts(db: Database, pseudonym: str) -> list[tuple[str, str, str]]:
    """Return the participant's consents: ``(version, day, receipt code)``, oldest first."""
    return [
        (version, day, receipt)
        for version, day, receipt in db.execute(
            "SELECT version, day, receipt FROM study_consents WHERE pseudonym = ?"
            " ORDER BY day, version",
            [pseudonym],
        )
    ]


# --- Questionnaires -------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """The questionnaire a participant fills in now: which, and at which timepoint."""

    instrument: Instrument
    timepoint: str


def current_form(study: Study, found: Enrolment) -> Form | None:
    """Return the form of the participant's intake step, if it is one."""
    if found.step == SCREENING:
        return Form(study.instruments[study.eligibility_instrument], SCREENING)
    if found.step == BASELINE:
        first = study.schedule[0]
        return Form(study.instruments[first.instrument], first.id)
    return None


def assessment_form(
    db: Database, study: Study, found: Enrolment, day: datetime.date
) -> tuple[Form, schedule.Due] | None:
    """After intake: return the form of the assessment due on ``day``, and what is due."""
    if found.step != DONE or found.erased or found.questionnaires_stopped:
        return None
    due = schedule.due(db, study, found.participant_id, day)
    if due is None:
        return None
    return Form(study.instruments[due.instrument], due.timepoint), due


def draft_answers(db: Database, found: Enrolment, form: Form, secret_key: bytes) -> dict[str, str]:
    """Return the answers of the unfinished form so far (none if the draft is another form's).

    The draft is sealed to the participant's own key and locked under their research
    slot: only their logged-in session opens it, and erasure destroys it.
    """
    if found.draft is None or found.draft_form != form.timepoint or found.slot is None:
        return {}
    try:
        opened = open_sealed(unlock(db, found.slot, found.draft), secret_key)
    except (SlotGoneError, UnwrapError, UnsealError):
        return {}
    answers: dict[str, str] = json.loads(opened)
    return answers


def page_number(form: Form, answers: dict[str, str], per_page: int | None = None) -> int:
    """Return the first page (0-based) with an unanswered item; the last page if none."""
    split = pages(form.instrument, per_page)
    for number, items in enumerate(split):
        if any(item.id not in answers for item in items):
            return number
    return len(split) - 1


def form_page(form: Form, number: int, per_page: int | None = None) -> list[Item]:
    """Return the items of page ``number`` of the form."""
    return pages(form.instrument, per_page)[number]


def save_page(
    db: Database,
    participant_id: str,
    public_key: bytes,
    secret_key: bytes,
    form: Form,
    number: int,
    chosen: dict[str, str],
    per_page: int | None = None,
) -> dict[str, str]:
    """Add the answers of page ``number`` to the draft; return every answer so far.

    :raises AnswersMissingError: when an item of the page has no answer (nothing is kept).
    :raises questionnaires.AnswersError: for an item or option the instrument lacks.
    """
    items = form_page(form, number, per_page)
    on_page = {item.id: chosen[item.id] for item in items if chosen.get(item.id)}
    check_answers(form.instrument, on_page)
    missing = [item.id for item in items if item.id not in on_page]
    if missing:
        raise AnswersMissingError(missing)
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None or found.slot is None or not _may_answer(db, found, form.timepoint):
            raise WrongStepError(form.timepoint)
        answers = {**draft_answers(db, found, form, secret_key), **on_page}
        sealed = seal(padded(answers), public_key)
        db.execute(
            "UPDATE study_participants SET draft_form = ?, draft = ? WHERE participant_id = ?",
            [form.timepoint, lock(db, found.slot, sealed), participant_id],
        )
    return answers


def padded(answers: dict[str, str]) -> bytes:
    """Return the answers as canonical JSON, with spaces up to a whole number of blocks.

    A draft's length would otherwise follow the options chosen so far (``"never"`` is
    shorter than ``"sometimes"``); ``json.loads`` reads the padded text as it is.
    """
    plain = canonical_answers(answers)
    blocks = max(1, -(-len(plain) // SEALED_BLOCK_BYTES))
    return plain.ljust(blocks * SEALED_BLOCK_BYTES, b" ")


def current_form_id(found: Enrolment) -> str | None:
    """Return the timepoint id of the form at the participant's step (screening, baseline)."""
    return found.step if found.step in (SCREENING, BASELINE) else None


def _may_answer(db: Database, found: Enrolment, timepoint: str) -> bool:
    """Return whether the participant may still answer the form of ``timepoint``.

    During intake, only their step's form; after it, an assessment not answered yet,
    while questionnaires go on (whether its window is open is checked at submission).
    """
    if found.step != DONE:
        return current_form_id(found) == timepoint
    return not found.questionnaires_stopped and not _completed(db, found.pseudonym, timepoint)


def _completed(db: Database, pseudonym: str, timepoint: str) -> bool:
    """Return whether the log holds an answer to ``timepoint`` from this participant."""
    return (
        db.execute(
            "SELECT 1 FROM study_log WHERE event = 'assessment-completed' AND pseudonym = ?"
            " AND json_extract(detail, '$.timepoint') = ?",
            [pseudonym, timepoint],
        ).fetchone()
        is not None
    )


def complete(form: Form, answers: dict[str, str]) -> bool:
    """Return whether every item of the form has an answer."""
    return all(item.id in answers for item in form.instrument.items)


def is_eligible(study: Study, answers: dict[str, str]) -> bool:
    """Return whether the answers meet every eligibility rule."""
    return all(answers.get(rule.item) == rule.equals for rule in study.eligibility_rules)


def _store_answers(
    db: Database, found: Enrolment, form: Form, answers: dict[str, str], day: datetime.date
) -> None:
    """Inside a write transaction: keep only the sealed answers, locked under the slot.

    Whatever must be known at once was computed in memory before this; the answers are
    then sealed to the study team, so the server cannot read them again, and the draft
    goes.
    """
    if found.slot is None:
        raise ErasedError
    sealed = seal_answers(answers, study_public_key(db))
    db.table("study_answers").insert(
        {
            "pseudonym": found.pseudonym,
            "instrument": form.instrument.id,
            "timepoint": form.timepoint,
            "day": day.isoformat(),
            "sealed": lock(db, found.slot, sealed),
        }
    )
    db.execute(
        "UPDATE study_participants SET draft_form = NULL, draft = NULL WHERE participant_id = ?",
        [found.participant_id],
    )


def completion(form: Form) -> log.Detail:
    """Return the study log's detail of a completed timepoint."""
    return {"timepoint": form.timepoint, "instrument": form.instrument.id}


def submit_screening(
    db: Database, study: Study, participant_id: str, answers: dict[str, str], day: datetime.date
) -> bool:
    """Decide eligibility in memory, store the sealed answers, log it; return eligibility.

    :raises WrongStepError: when the participant is not at screening (sent twice).
    """
    form = Form(study.instruments[study.eligibility_instrument], SCREENING)
    score(form.instrument, answers)  # refuses unknown items and options
    eligible = is_eligible(study, answers)
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None:
            raise WrongStepError(SCREENING)
        _set_step(db, participant_id, SCREENING, BASELINE if eligible else INELIGIBLE)
        _store_answers(db, found, form, answers, day)
        # Only the outcome: which rule failed would tell a reader of the log (or of a
        # seized disk) an answer; the study team reads the reasons from the sealed answers.
        # The stratum lets the CONSORT flow split those never randomised by stratum too.
        log.append(
            db,
            "eligibility",
            day,
            found.pseudonym,
            {"eligible": eligible, "stratum": found.stratum},
        )
    return eligible


def submit_baseline(
    db: Database, study: Study, participant_id: str, answers: dict[str, str], day: datetime.date
) -> tuple[str, list[str]]:
    """Store the sealed baseline answers and allocate the participant, once.

    Both happen in one transaction that first moves the step from baseline to done, so
    a form sent twice finds the step moved and allocates nobody a second time (and the
    ``allocations`` table's key refuses it as well). The safety rules are checked in
    memory before the answers are sealed, and what fired is recorded in the same
    transaction.

    :returns: the arm, and the ids of the safety rules that fired (the participant is
        shown crisis help at once when there are any).
    :raises WrongStepError: when the participant is not at the baseline step.
    """
    first = study.schedule[0]
    form = Form(study.instruments[first.instrument], first.id)
    hits = safety.fired(study, form.instrument, answers)  # also refuses unknown answers
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None:
            raise WrongStepError(BASELINE)
        _set_step(db, participant_id, BASELINE, DONE)
        safety.record(db, study, participant_id, found.pseudonym, form.timepoint, hits, day)
        _store_answers(db, found, form, answers, day)
        log.append(db, "assessment-completed", day, found.pseudonym, completion(form))
        arm = allocate(db, found.pseudonym, found.stratum, day)
    return arm, [rule.id for rule in hits]


def submit_assessment(
    db: Database,
    study: Study,
    participant_id: str,
    timepoint: str,
    answers: dict[str, str],
    day: datetime.date,
) -> list[str]:
    """Store the sealed answers to an assessment after intake and log them as completed.

    :returns: the ids of the safety rules the answers fired (the page shows crisis help
        when there are any).
    :raises WrongStepError: when it was answered already, questionnaires stopped, or the
        timepoint is not open to this participant yet.
    :raises WindowClosedError: when its window closed before it was sent.
    """
    point = next((item for item in study.schedule[1:] if item.id == timepoint), None)
    if point is None:
        raise WrongStepError(timepoint)
    form = Form(study.instruments[point.instrument], point.id)
    # Safety rules are decided here, in memory, before the answers are sealed.
    hits = safety.fired(study, form.instrument, answers)  # also refuses unknown answers
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None or found.step != DONE or not _may_answer(db, found, point.id):
            raise WrongStepError(point.id)
        state = {
            window.timepoint.id: window.state
            for window in schedule.windows(db, study, found.pseudonym, day)
        }.get(point.id)
        if state in (schedule.MISSED, schedule.WITHDRAWN):
            raise WindowClosedError(point.id)
        if state != schedule.OPEN:
            raise WrongStepError(point.id)
        _store_answers(db, found, form, answers, day)
        log.append(db, "assessment-completed", day, found.pseudonym, completion(form))
        safety.record(db, study, participant_id, found.pseudonym, point.id, hits, day)
    return [rule.id for rule in hits]


#: Below this share of its list left, ``stillroom study verify`` names a stratum.
FEW_PLACES_LEFT = 0.1


def places_left(db: Database) -> dict[str, tuple[int, int]]:
    """Return, per stratum, how many entries of its allocation list are left, and its length.

    When none is left, intake ends before allocation with "closed for now"; the study
    team needs to see it coming.
    """
    return {
        stratum: (length - used, length)
        for stratum, length, used in db.execute(
            "SELECT stratum, length, (SELECT count(*) FROM allocations"
            " WHERE allocations.stratum = allocation_lists.stratum)"
            " FROM allocation_lists ORDER BY stratum"
        )
    }


def allocation_of(db: Database, pseudonym: str) -> tuple[str, datetime.date] | None:
    """Return the participant's arm and the day of allocation, or ``None``."""
    row = db.execute("SELECT arm, day FROM allocations WHERE pseudonym = ?", [pseudonym]).fetchone()
    return None if row is None else (str(row[0]), datetime.date.fromisoformat(row[1]))


def waitlist_ends(study: Study, arm_id: str, allocated: datetime.date) -> datetime.date | None:
    """Return the day a waitlisted participant's wait ends, or ``None`` for other arms.

    The day is a calendar day: it begins at midnight in the participant's time-zone band.
    """
    arm = study.arm(arm_id)
    if arm.gets != "waitlist" or arm.waitlist_weeks is None:
        return None
    return allocated + datetime.timedelta(weeks=arm.waitlist_weeks)


# --- Withdrawal -----------------------------------------------------------------------


def withdraw(db: Database, participant_id: str, level: str, day: datetime.date, now: int) -> None:
    """Withdraw at one of three levels; each is logged.

    ``stop-sessions``: no more booking, and upcoming appointments are cancelled.
    ``stop-questionnaires``: no more assessments are offered, and an unsent draft goes.
    ``erase``: both, and the research data goes: the answers, consents and draft are
    deleted and the research slot destroyed, so no copy of them opens again. The study
    log keeps its pseudonymous events and the allocation stays (it is part of the list),
    but the account gets a fresh random pseudonym, so nothing in the database links it to
    them any more (a raw disk image may: docs/auditing.md); the row keeps only the flags
    that keep the person out of the study.

    :raises ValueError: for an unknown level.
    :raises WrongStepError: when the participant is not in the study or erased already.
    """
    if level not in WITHDRAWALS:
        raise ValueError(level)
    with transaction(db):
        found = enrolment(db, participant_id)
        if found is None or found.erased:
            raise WrongStepError(level)
        gone = []
        if level in (STOP_SESSIONS, ERASE):
            db.execute(
                "UPDATE study_participants SET sessions_stopped = 1 WHERE participant_id = ?",
                [participant_id],
            )
            db.execute(
                "DELETE FROM appointments WHERE participant_id = ? AND starts_at > ?"
                " AND cancelled = 0",
                [participant_id, now],
            )
        if level in (STOP_QUESTIONNAIRES, ERASE):
            # An unsent form's answers go too: no form of theirs will be sent any more.
            db.execute(
                "UPDATE study_participants SET questionnaires_stopped = 1, draft = NULL,"
                " draft_form = NULL WHERE participant_id = ?",
                [participant_id],
            )
        if level == ERASE:
            safety.erase_flags(db, participant_id)
            db.execute("DELETE FROM study_answers WHERE pseudonym = ?", [found.pseudonym])
            db.execute("DELETE FROM study_consents WHERE pseudonym = ?", [found.pseudonym])
            # The consents and answers named the old pseudonym: they are gone before it is.
            # Nor may the stratum or the course's count lead back to the log's entries.
            db.execute(
                "UPDATE study_participants SET erased = 1, slot = NULL, draft = NULL,"
                " draft_form = NULL, consent_version = NULL, step = ?, pseudonym = ?,"
                " stratum = '' WHERE participant_id = ?",
                [WITHDRAWN, secrets.token_hex(10), participant_id],
            )
            db.execute("DELETE FROM courses WHERE participant_id = ?", [participant_id])
            # The day the account was made is the day of its first consent in the log.
            db.execute("UPDATE participants SET created_day = NULL WHERE id = ?", [participant_id])
            db.execute("DELETE FROM proposals WHERE participant_id = ?", [participant_id])
            db.execute("DELETE FROM slots WHERE for_participant = ?", [participant_id])
            gone = doomed(db, [found.slot])
        log.append(db, "withdrawal", day, found.pseudonym, {"level": level, "step": found.step})
    destroy_slots(db, gone)
    checkpoint(db)  # the deleted rows must not linger in the write-ahead log


def research_slots(db: Database, participant_id: str) -> list[int]:
    """Return the research slot of a participant whose account is being deleted."""
    row = db.execute(
        "SELECT slot FROM study_participants WHERE participant_id = ? AND slot IS NOT NULL",
        [participant_id],
    ).fetchone()
    return [] if row is None else [int(row[0])]


def booking_refusal(db: Database, participant_id: str) -> str | None:
    """In a study: return why the participant may not book, or ``None``.

    :returns: ``"intake"`` (not complete) or ``"stopped"`` (sessions stopped).
    """
    row = db.execute(
        "SELECT step, sessions_stopped FROM study_participants WHERE participant_id = ?",
        [participant_id],
    ).fetchone()
    if row is None:
        return "intake"
    if row[1]:
        return "stopped"
    if row[0] != DONE:
        return "intake"
    return None
