"""The course of sessions: one therapist across it, proposed next times, the waitlist.

A participant's course starts with their first booking, with any therapist who may see
them (in a study: of their language's site). From then on they book only with that
therapist, until the therapist is disabled or hands them over. The therapist can
propose the next time from the chat page; the participant confirms it with one click,
and it is booked with every rule of a normal booking.

Outside a study the same course exists, sized by the operator's settings. In a study,
the arm decides whether the participant is in the course at all: "chat" from the
allocation day, "waitlist" from the day the waitlist ends (the crossover, logged once),
"none" never; and crossovers, handovers and attended sessions go to the study log.

Attended sessions are counted from what the server can see without a key: an
appointment that was not cancelled, whose chat window is over, and in which both sides
wrote (one flag per side on the appointment, cleared once it is counted; the sender of
each message stays sealed inside it).
The minutes of chat logged are the window's length (the booked time and its extensions),
never a clock time.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import NamedTuple

from sqlite_utils import Database

from stillroom.webapp import booking
from stillroom.webapp.chat import BOTH_SIDES
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import transaction
from stillroom.webapp.study import log
from stillroom.webapp.study.definition import Study
from stillroom.webapp.study.intake import booking_refusal, outside_study
from stillroom.webapp.therapists import therapists_at


class NotInCourseError(booking.BookingError):
    """In a study, this account has no course of sessions (not allocated, or no chat in its arm)."""


class WaitlistError(booking.BookingError):
    """The participant's waitlist has not ended yet: they may book from ``opens_at``."""

    def __init__(self, ends: datetime.date) -> None:
        super().__init__(ends)
        self.ends = ends
        self.opens_at = midnight(ends)


class ProposalGoneError(booking.BookingError):
    """There is no proposal to confirm: it expired, was withdrawn, or its time was taken."""


class HandoverError(Exception):
    """The therapist cannot hand this participant over to that therapist."""


class StudyParticipant(NamedTuple):
    """What the course needs to know of a participant in a study."""

    pseudonym: str
    stratum: str
    arm: str
    allocated_day: datetime.date


def study_participant(db: Database, participant_id: str) -> StudyParticipant | None:
    """Return the participant's pseudonym, stratum, arm and allocation day, once allocated."""
    row = db.execute(
        "SELECT allocations.pseudonym, allocations.stratum, allocations.arm, allocations.day"
        " FROM study_participants JOIN allocations USING (pseudonym)"
        " WHERE study_participants.participant_id = ?",
        [participant_id],
    ).fetchone()
    if row is None:
        return None
    pseudonym, stratum, arm, day = row
    return StudyParticipant(pseudonym, stratum, arm, datetime.date.fromisoformat(day))


def day_of(now: int) -> datetime.date:
    """Return the UTC day of ``now``: study days are UTC days."""
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date()


def midnight(day: datetime.date) -> int:
    """Return the first moment of ``day`` (UTC)."""
    return int(datetime.datetime.combine(day, datetime.time(0), datetime.UTC).timestamp())


def waitlist_end(study: Study, who: StudyParticipant) -> datetime.date | None:
    """Return the day a waitlisted participant crosses over, or ``None`` for other arms."""
    arm = study.arm(who.arm)
    if arm.gets != "waitlist" or arm.waitlist_weeks is None:
        return None
    return who.allocated_day + datetime.timedelta(weeks=arm.waitlist_weeks)


def refusal(
    db: Database, participant_id: str, now: int, study: Study | None
) -> booking.BookingError | None:
    """Return why the study does not let this account book now, or ``None``.

    Open mode has no such rule. In a study, only an allocated participant whose arm
    gets chat may book: at once in the chat arm, from the waitlist's end in a waitlist arm.
    """
    if study is None:
        return None
    who = study_participant(db, participant_id)
    if who is None or study.arm(who.arm).gets == "none":
        return NotInCourseError()
    ends = waitlist_end(study, who)
    if ends is not None and day_of(now) < ends:
        return WaitlistError(ends)
    return None


def _crossed_over(db: Database, pseudonym: str) -> bool:
    return bool(
        db.execute(
            "SELECT 1 FROM study_log WHERE event = 'crossover' AND pseudonym = ?", [pseudonym]
        ).fetchone()
    )


def _cross_over(db: Database, pseudonym: str, ends: datetime.date) -> bool:
    """Log the crossover of ``pseudonym`` once (inside a write transaction)."""
    if _crossed_over(db, pseudonym):
        return False
    log.append(db, "crossover", ends, pseudonym, {})
    return True


def cross_over_if_due(db: Database, participant_id: str, now: int, study: Study | None) -> bool:
    """At a page view: log this participant's crossover if their waitlist has ended.

    :returns: whether it was logged now (never twice: the log is checked under the
        write lock, by this and by :func:`cross_over_due` alike).
    """
    if study is None:
        return False
    who = study_participant(db, participant_id)
    ends = None if who is None else waitlist_end(study, who)
    if who is None or ends is None or day_of(now) < ends or _crossed_over(db, who.pseudonym):
        return False
    with transaction(db):
        return _cross_over(db, who.pseudonym, ends)


def cross_over_due(db: Database, now: int, study: Study) -> int:
    """In the maintenance pass: log every crossover that is due; return how many.

    Someone who withdrew and erased gets none: nothing more is logged under their pseudonym.
    """
    waiting = [arm.id for arm in study.arms if arm.gets == "waitlist"]
    if not waiting:
        return 0
    marks = ",".join("?" * len(waiting))
    rows = db.execute(
        f"SELECT pseudonym, stratum, arm, day FROM allocations WHERE arm IN ({marks})"  # noqa: S608 - marks only
        " AND pseudonym NOT IN (SELECT pseudonym FROM study_log"
        " WHERE event = 'crossover' AND pseudonym IS NOT NULL)"
        # The allocation outlives "withdraw and erase", but nothing more may be logged
        # under the pseudonym of someone who erased.
        " AND pseudonym NOT IN (SELECT pseudonym FROM study_log WHERE event = 'withdrawal'"
        " AND json_extract(detail, '$.level') = 'erase' AND pseudonym IS NOT NULL)",
        waiting,
    ).fetchall()
    logged = 0
    today = day_of(now)
    for pseudonym, stratum, arm, day in rows:
        who = StudyParticipant(pseudonym, stratum, arm, datetime.date.fromisoformat(day))
        ends = waitlist_end(study, who)
        if ends is not None and today >= ends:
            with transaction(db):
                logged += _cross_over(db, pseudonym, ends)
    return logged


def course_therapist(db: Database, participant_id: str) -> str | None:
    """Return the therapist of the participant's course, while they can still be booked."""
    row = db.execute(
        "SELECT courses.therapist_id FROM courses"
        " JOIN therapists ON therapists.id = courses.therapist_id"
        " WHERE courses.participant_id = ? AND therapists.disabled = 0"
        " AND therapists.slot IS NOT NULL",
        [participant_id],
    ).fetchone()
    return None if row is None else str(row[0])


def bookable_therapists(
    db: Database, participant_id: str, language: str, study: Study | None
) -> frozenset[str] | None:
    """Return the therapists this participant may book now; ``None``: anyone of the language.

    The course's therapist while there is one; else, in a study, the therapists of the
    participant's stratum (its language and site), and only in that language.
    """
    therapist = course_therapist(db, participant_id)
    if study is None:
        return None if therapist is None else frozenset([therapist])
    # The stratum drawn at allocation decides, never the language of the address: another
    # language in the URL must not lead to another site's therapists, nor may the course's
    # therapist be booked in another language, or after moving to another site.
    who = study_participant(db, participant_id)
    if who is None or language not in study.sites or study.stratum_of(language) != who.stratum:
        return frozenset()
    stratum = frozenset(item.id for item in therapists_at(db, language, study.sites[language]))
    if therapist is None:
        return stratum
    return frozenset([therapist]) & stratum


def _keep_therapist(db: Database, participant_id: str, appointment_id: str) -> None:
    """Make the therapist of a new booking the course's, unless the course has one."""
    with transaction(db):
        (therapist_id,) = db.execute(
            "SELECT therapist_id FROM appointments WHERE id = ?", [appointment_id]
        ).fetchone()
        if course_therapist(db, participant_id) is None:
            db.execute(
                "INSERT INTO courses (participant_id, therapist_id) VALUES (?, ?)"
                " ON CONFLICT (participant_id) DO UPDATE SET therapist_id = excluded.therapist_id",
                [participant_id, therapist_id],
            )
        _withdraw(db, participant_id)


def book_in_course(
    db: Database,
    participant_id: str,
    slot_id: str,
    language: str,
    now: int,
    settings: Settings,
    study: Study | None,
    replacing: str | None = None,
) -> str:
    """Book (or move onto) a slot with the course's rules on top of booking's; return its id.

    :raises booking.BookingError: as :func:`booking.book` does; a time of a therapist the
        participant may not book is :class:`booking.SlotUnavailableError`.
    """
    appointment_id = booking.book(
        db,
        participant_id,
        slot_id,
        language,
        now,
        settings.max_upcoming_bookings,
        settings.booking_cutoff_hours * 3600,
        replacing=replacing,
        notice_seconds=settings.booking_notice_minutes * 60,
        therapists=bookable_therapists(db, participant_id, language, study),
    )
    _keep_therapist(db, participant_id, appointment_id)
    return appointment_id


@dataclass(frozen=True)
class Proposal:
    """A next time a therapist proposed to a participant."""

    slot_id: str
    therapist_name: str
    starts_at: int
    ends_at: int
    language: str


def propose(
    db: Database,
    therapist_id: str,
    participant_id: str,
    language: str,
    now: int,
    slot_id: str | None = None,
    new_time: tuple[int, int] | None = None,
) -> None:
    """Propose one of the therapist's free times, or a new time only for this participant.

    A new proposal replaces the one before; a time made for the one before goes with it.

    :param new_time: ``(starts_at, minutes)`` of a time to publish for this participant alone.
    :raises booking.NotFoundError: for a slot that is not the therapist's free time.
    :raises booking.SlotInputError: and :class:`booking.OverlapError` for a new time
        that cannot be published.
    """
    if new_time is not None:
        starts_at, minutes = new_time
        [slot_id] = booking.publish_slots(
            db,
            therapist_id,
            [starts_at],
            minutes,
            (language,),
            (language,),
            now,
            for_participant=participant_id,
        )
    with transaction(db):
        free = db.execute(
            "SELECT 1 FROM slots WHERE id = ? AND therapist_id = ? AND starts_at > ?"
            " AND (for_participant IS NULL OR for_participant = ?)"
            " AND id NOT IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
            [slot_id, therapist_id, now, participant_id],
        ).fetchone()
        if free is None:
            raise booking.NotFoundError
        _withdraw(db, participant_id, keep=slot_id)
        db.execute(
            "INSERT INTO proposals (participant_id, therapist_id, slot_id, language)"
            " VALUES (?, ?, ?, ?)",
            [participant_id, therapist_id, slot_id, language],
        )


def _withdraw(db: Database, participant_id: str, keep: str | None = None) -> None:
    """Drop the participant's proposal and the unbooked time made for it alone."""
    db.execute(
        "DELETE FROM slots WHERE for_participant = ? AND id IS NOT ?"
        " AND id NOT IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
        [participant_id, keep],
    )
    db.execute("DELETE FROM proposals WHERE participant_id = ?", [participant_id])


def proposal_for(db: Database, participant_id: str, now: int) -> Proposal | None:
    """Return the participant's proposal while its time is still free and ahead."""
    row = db.execute(
        "SELECT slots.id, therapists.name, slots.starts_at, slots.ends_at, proposals.language"
        " FROM proposals JOIN slots ON slots.id = proposals.slot_id"
        " JOIN therapists ON therapists.id = proposals.therapist_id"
        " WHERE proposals.participant_id = ? AND slots.starts_at > ?"
        " AND slots.id NOT IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
        [participant_id, now],
    ).fetchone()
    return None if row is None else Proposal(*row)


def confirm_proposal(
    db: Database, participant_id: str, now: int, settings: Settings, study: Study | None
) -> str:
    """Book the proposed time, exactly as a booking of it would be; return the appointment.

    :raises ProposalGoneError: when there is no proposal, or its time passed or was taken.
    :raises booking.BookingError: when a rule of booking refuses it (the limit of upcoming
        appointments among them).
    """
    proposal = proposal_for(db, participant_id, now)
    if proposal is None:
        raise ProposalGoneError
    return book_in_course(
        db, participant_id, proposal.slot_id, proposal.language, now, settings, study
    )


def purge_proposals(db: Database, now: int) -> int:
    """Delete proposals whose time has begun or was taken by someone; return how many."""
    with transaction(db):
        return int(
            db.execute(
                "DELETE FROM proposals WHERE slot_id IN (SELECT id FROM slots WHERE starts_at <= ?)"
                " OR slot_id IN (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL)",
                [now],
            ).rowcount
        )


def hand_over(
    db: Database,
    participant_id: str,
    from_therapist: str,
    to_therapist: str,
    language: str,
    now: int,
    study: Study | None,
) -> None:
    """Make ``to_therapist`` the course's therapist; in a study, log the handover.

    :raises HandoverError: when the participant's course is not ``from_therapist``'s, or
        ``to_therapist`` is not one who may see them (same language, and site in a study).
    """
    if to_therapist not in (handover_choices(db, from_therapist, language, study)):
        raise HandoverError("not a therapist this participant can be handed over to")
    with transaction(db):
        current = db.execute(
            "SELECT therapist_id FROM courses WHERE participant_id = ?", [participant_id]
        ).fetchone()
        if current is None or current[0] != from_therapist:
            raise HandoverError("the participant's course is not this therapist's")
        db.execute(
            "UPDATE courses SET therapist_id = ? WHERE participant_id = ?",
            [to_therapist, participant_id],
        )
        _withdraw(db, participant_id)
        who = None if study is None else study_participant(db, participant_id)
        if study is not None and who is not None:
            log.append(
                db,
                "handover",
                day_of(now),
                who.pseudonym,
                {"site": study.sites.get(language), "sessions": attended(db, participant_id)},
            )


def handover_choices(
    db: Database, therapist_id: str, language: str, study: Study | None
) -> dict[str, str]:
    """Return ``{id: name}`` of the therapists a participant can be handed over to."""
    rows = db.execute(
        "SELECT id, name, languages, site FROM therapists WHERE id != ? AND disabled = 0"
        " AND role = 'therapist' AND slot IS NOT NULL"
        " AND site IS (SELECT site FROM therapists WHERE id = ?)"
        " ORDER BY name",
        [therapist_id, therapist_id],
    ).fetchall()
    site = None if study is None else study.sites.get(language)
    return {
        str(row[0]): str(row[1])
        for row in rows
        if language in str(row[2]).split(",") and (study is None or row[3] == site)
    }


def attended(db: Database, participant_id: str) -> int:
    """Return how many sessions of the course the participant has attended."""
    row = db.execute(
        "SELECT attended FROM courses WHERE participant_id = ?", [participant_id]
    ).fetchone()
    return 0 if row is None else int(row[0])


def count_sessions(db: Database, now: int, study: Study | None) -> int:
    """Count every appointment whose chat is over, once; return how many were attended.

    An appointment counts as attended when it was not cancelled and both sides wrote in
    its chat (``appointments.sides_wrote``): one side alone is a no-show, not a session.
    In a study, such a no-show is logged as ``session-missed``, on the appointment's day.
    """
    rows = db.execute(
        "SELECT id, participant_id, therapist_id, starts_at, ends_at, chat_extra_minutes,"
        " cancelled, sides_wrote FROM appointments WHERE course_counted = 0"
        " AND (chat_closed = 1 OR cancelled = 1 OR ends_at + chat_extra_minutes * 60 <= ?)",
        [now],
    ).fetchall()
    counted = 0
    for appointment_id, participant_id, therapist_id, starts, ends, extra, cancelled, sides in rows:
        closes = ends + extra * 60
        with transaction(db):
            written = not cancelled and sides == BOTH_SIDES
            done = db.execute(
                "UPDATE appointments SET course_counted = 1, sides_wrote = 0"
                " WHERE id = ? AND course_counted = 0",
                [appointment_id],
            ).rowcount
            if not done or cancelled or _erased(db, participant_id):
                continue  # an erased participant's course is gone, and stays gone
            if not written:
                _log_missed(db, participant_id, starts, study)
                continue
            db.execute(
                "INSERT INTO courses (participant_id, therapist_id, attended) VALUES (?, ?, 1)"
                " ON CONFLICT (participant_id) DO UPDATE SET attended = attended + 1",
                [participant_id, therapist_id],
            )
            counted += 1
            who = None if study is None else study_participant(db, participant_id)
            if who is not None:
                log.append(
                    db,
                    "session-attended",
                    day_of(starts),
                    who.pseudonym,
                    {"minutes": (closes - starts) // 60, "session": attended(db, participant_id)},
                )
    return counted


def _erased(db: Database, participant_id: str) -> bool:
    """Return whether the participant withdrew from a study and erased their research data."""
    row = db.execute(
        "SELECT erased FROM study_participants WHERE participant_id = ?", [participant_id]
    ).fetchone()
    return row is not None and bool(row[0])


def _log_missed(db: Database, participant_id: str, starts: int, study: Study | None) -> None:
    """Inside a write transaction: log a study participant's appointment that was no session.

    The export's sessions.csv then says "not attended" for it; ``session`` is the number
    the session would have had.
    """
    who = None if study is None else study_participant(db, participant_id)
    if who is not None:
        session = attended(db, participant_id) + 1
        log.append(db, "session-missed", day_of(starts), who.pseudonym, {"session": session})


@dataclass(frozen=True)
class Standing:
    """Where a participant is in their course, for the account page."""

    #: The session they come to next (sessions attended so far, plus one).
    session: int
    #: The sessions the course plans.
    planned: int
    weeks: int
    #: In a waitlist: the day it ends; ``None`` otherwise.
    waitlist_ends: datetime.date | None
    #: In a study, an arm without chat (or no allocation yet): no course at all.
    in_course: bool
    proposal: Proposal | None


def standing(
    db: Database, participant_id: str, now: int, settings: Settings, study: Study | None
) -> Standing:
    """Return the participant's place in the course, for their account page.

    The planned number of sessions is the study's ``sessions_max`` (a participant may
    have up to that many, so "session 2 of 6" never runs past its end), or the
    operator's ``STILLROOM_COURSE_SESSIONS`` outside a study.
    """
    planned, weeks = settings.course_sessions, settings.course_weeks
    ends = None
    in_course = True
    if study is not None:
        planned, weeks = study.course.sessions_max, study.course.weeks
        who = study_participant(db, participant_id)
        in_course = who is not None and study.arm(who.arm).gets != "none"
        ends = None if who is None else waitlist_end(study, who)
        if ends is not None and day_of(now) >= ends:
            ends = None
    return Standing(
        session=attended(db, participant_id) + 1,
        planned=planned,
        weeks=weeks,
        waitlist_ends=ends,
        in_course=in_course,
        proposal=proposal_for(db, participant_id, now),
    )


def may_book(
    db: Database,
    participant_id: str,
    now: int,
    settings: Settings,
    study: Study | None = None,
) -> booking.BookingError | None:
    """Return why this account may not book now, or ``None`` when it may.

    The rules about the account (not the time chosen) meet here, so that the views ask
    once: a block, the open service's minimum account age, and in a study the intake,
    a withdrawal, the arm and its waitlist.

    :param study: the running study, whose arm and waitlist decide too; ``None``: open mode.
    """
    row = db.execute(
        "SELECT blocked, created_day FROM participants WHERE id = ?", [participant_id]
    ).fetchone()
    if row is None:
        return booking.NotFoundError()
    blocked, created_day = row
    if blocked:
        return booking.BookingBlockedError()
    day = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    if settings.study and not outside_study(db, participant_id, day):
        # In a study the intake, not the account's age, keeps new accounts from booking;
        # once it has ended, only those allocated keep the study's rules.
        why = booking_refusal(db, participant_id)
        if why == "intake":
            return booking.IntakeIncompleteError()
        if why == "stopped":
            return booking.SessionsStoppedError()
        if study is None:  # a caller that forgot the study must not open the control arm
            return NotInCourseError()
        return refusal(db, participant_id, now, study)  # the arm and its waitlist
    opens_at = booking.booking_opens_at(created_day, settings.booking_min_account_hours)
    if now < opens_at:
        return booking.AccountTooNewError(opens_at)
    return None
