"""A whole simulated trial: 60 participants through the real code, then its flow and its export.

Sixty planned participants go through intake, allocation, sessions and assessments on a
clock that moves forward day by day, with the maintenance pass run at the end of every
day, as the server runs it. Every step calls what the pages call: accounts, intake (page
by page), booking in the course, both sides writing in the chat, withdrawal. Then the
real ``stillroom study consort``, ``export`` and ``open-export`` commands are checked
against what the plans say, box by box and cell by cell.
"""

from __future__ import annotations

import base64
import csv
import datetime
import heapq
import itertools
import json
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest

from stillroom.crypto.passphrase import generate_passphrase
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp import chat, therapists
from stillroom.webapp.accounts import Unlocked, create_account
from stillroom.webapp.booking import publish_slots
from stillroom.webapp.retention import purge
from stillroom.webapp.store import connect
from stillroom.webapp.study import consort, course, export, intake, safety
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.study.questionnaires import pages

from enrolment import DERIVER, ELIGIBLE, LOOKUP_KEY, run_study, start, study_settings
from support import stillroom_env

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
STUDY = load_study(EXAMPLE)
START = datetime.date(2027, 3, 1)
#: Participants begin intake over this many days.
INTAKE_DAYS = 10
#: The last day the clock reaches: every window of the last ones randomised has closed.
LAST_DAY = START + datetime.timedelta(days=INTAKE_DAYS + 66)
WELLBEING = STUDY.instruments["wellbeing"]
SCREENING = STUDY.instruments["screening"]
#: What each option of the wellbeing questionnaire counts.
VALUES = dict(
    zip(
        WELLBEING.option_sets["frequency"].options,
        WELLBEING.option_sets["frequency"].values,
        strict=True,
    )
)
TIMEPOINTS = {point.id: point for point in STUDY.schedule}
LATER = [point.id for point in STUDY.schedule[1:]]
WAITLIST_DAYS = 7 * next(arm.waitlist_weeks or 0 for arm in STUDY.arms if arm.gets == "waitlist")
#: Sessions of a course come every this many days, the first two days after it begins.
SESSION_EVERY = 4
#: Written in every attended chat: it must never reach the export.
HELLO = "Hello, this is my first time here"

COMPLETED, MISSED, WITHDRAWN = "completed", "missed", "withdrawn"
STOP_SESSIONS, STOP_QUESTIONNAIRES, ERASE = consort.LEVELS


def outcomes(
    week2: str, week4: str, week6: str, week8: str, session2: str | None = None
) -> dict[str, str]:
    """Return what becomes of each timepoint after the baseline (session2: after-session-2)."""
    found = {"week-2": week2, "week-4": week4, "week-6": week6, "week-8": week8}
    if session2 is not None:
        found["after-session-2"] = session2
    return found


EVERY = outcomes(COMPLETED, COMPLETED, COMPLETED, COMPLETED)
EVERY_WITH_SESSION = outcomes(COMPLETED, COMPLETED, COMPLETED, COMPLETED, COMPLETED)
NONE_AFTER = outcomes(MISSED, MISSED, MISSED, MISSED)


@dataclass
class Plan:
    """One participant's way through the trial, and what the data must say of it.

    Days of a randomised plan count from randomisation; those of one that never is,
    from its intake.
    """

    language: str
    #: The screening's answers; ``None``: consented, then left before screening.
    screening: dict[str, str] | None = None
    randomised: bool = False
    #: For a randomised plan: the arm it needs (``None``: either arm).
    needs: str | None = None
    sessions: int = 0
    #: After the sessions attended: one more appointment that only the participant wrote in.
    no_show: bool = False
    #: The first session's chat is extended by the therapist.
    extended: bool = False
    #: Each timepoint after the baseline: completed, missed or withdrawn; absent: never due.
    outcomes: dict[str, str] = field(default_factory=dict)
    #: ``(level, day)`` of each withdrawal.
    withdraw: tuple[tuple[str, int], ...] = ()
    #: The timepoint whose answers fire a safety rule (thoughts of self-harm "sometimes").
    safety_at: str | None = None
    #: Not randomised: the first page of the baseline was answered before leaving.
    began_baseline: bool = False

    # What happened, filled in as the trial runs.
    participant_id: str = ""
    secret_key: bytes = b""
    pseudonym: str = ""
    arm: str | None = None
    day: datetime.date = START
    #: ``{timepoint: (day sent, answers)}``, the screening and the baseline included.
    entered: dict[str, tuple[datetime.date, dict[str, str]]] = field(default_factory=dict)
    #: ``(session, day, attended, minutes)`` of each appointment.
    appointments: list[tuple[int, datetime.date, bool, int]] = field(default_factory=list)

    def begin(self, account: Unlocked, pseudonym: str, day: datetime.date) -> None:
        """Note whose account follows this plan, and from which day."""
        self.participant_id, self.secret_key = account.participant_id, account.secret_key
        self.pseudonym, self.day = pseudonym, day

    @property
    def level(self) -> str | None:
        """The furthest withdrawal level chosen, if any."""
        chosen = {level for level, _ in self.withdraw}
        return next((level for level in reversed(consort.LEVELS) if level in chosen), None)

    @property
    def erased(self) -> bool:
        return self.level == ERASE

    @property
    def course_starts(self) -> datetime.date:
        """The day the course can begin: randomisation, or the end of the waitlist."""
        wait = WAITLIST_DAYS if STUDY.arm(self.arm or "").gets == "waitlist" else 0
        return self.day + datetime.timedelta(days=wait)

    def session_day(self, number: int) -> datetime.date:
        return self.course_starts + datetime.timedelta(days=SESSION_EVERY * number - 2)

    def anchor(self, timepoint: str) -> datetime.date:
        """The day a timepoint's window is counted from."""
        point = TIMEPOINTS[timepoint]
        if point.after_session is not None:
            return self.session_day(point.after_session) + datetime.timedelta(weeks=point.week)
        return self.day + datetime.timedelta(weeks=point.week)

    def closes(self, timepoint: str) -> datetime.date:
        return self.anchor(timepoint) + datetime.timedelta(days=TIMEPOINTS[timepoint].closes_days)


def not_eligible(reason: str) -> dict[str, str]:
    return {**ELIGIBLE, reason: "no"}


def plans() -> list[Plan]:
    """The 60 participants: 15 who are never randomised, then 45 who are, in three strata."""
    never = [
        Plan("en"),
        Plan("cs"),
        *(Plan("en", not_eligible(reason)) for reason in ("age", "recent-use", "wants-chat")),
        Plan("en", not_eligible("age")),
        Plan("de", not_eligible("recent-use")),
        Plan("de", not_eligible("age")),
        Plan("cs", not_eligible("wants-chat")),
        Plan("cs", not_eligible("age")),
        Plan("en", ELIGIBLE),
        Plan("en", ELIGIBLE, began_baseline=True),
        Plan("de", ELIGIBLE),
        Plan("en", ELIGIBLE, withdraw=((STOP_QUESTIONNAIRES, 1),)),
        Plan("de", ELIGIBLE, withdraw=((ERASE, 1),)),
    ]

    def randomised(language: str, **kwargs: Any) -> Plan:
        return Plan(language, ELIGIBLE, True, **kwargs)

    def nothing_more(language: str) -> Plan:
        return randomised(language, outcomes=NONE_AFTER)

    def questionnaires_only(language: str) -> Plan:
        return randomised(language, outcomes=EVERY)

    def one_then_lost(language: str) -> Plan:
        return randomised(
            language, sessions=1, outcomes=outcomes(COMPLETED, MISSED, MISSED, MISSED)
        )

    def whole_course(language: str) -> Plan:
        return randomised(language, sessions=4, outcomes=EVERY_WITH_SESSION)

    def two_and_a_no_show(language: str) -> Plan:
        return randomised(
            language,
            sessions=2,
            no_show=True,
            outcomes=outcomes(COMPLETED, MISSED, COMPLETED, COMPLETED, MISSED),
        )

    def five_extended(language: str) -> Plan:
        return randomised(
            language,
            sessions=5,
            extended=True,
            outcomes=outcomes(COMPLETED, COMPLETED, MISSED, COMPLETED, COMPLETED),
        )

    def stops_questionnaires(language: str) -> Plan:
        return randomised(
            language,
            outcomes=outcomes(COMPLETED, WITHDRAWN, WITHDRAWN, WITHDRAWN),
            withdraw=((STOP_QUESTIONNAIRES, 20),),
        )

    def stops_sessions_at_once(language: str) -> Plan:
        return randomised(language, outcomes=EVERY, withdraw=((STOP_SESSIONS, 3),))

    en = [
        # In the chat arm: one session, then no more sessions, but every questionnaire.
        randomised("en", needs="chat", sessions=1, outcomes=EVERY, withdraw=((STOP_SESSIONS, 5),)),
        # The whole course of six, every timepoint, and a safety rule fired at week 2.
        randomised("en", needs="chat", sessions=6, outcomes=EVERY_WITH_SESSION, safety_at="week-2"),
        # Three sessions, then stops sessions, then questionnaires too.
        randomised(
            "en",
            needs="chat",
            sessions=3,
            outcomes=outcomes(COMPLETED, WITHDRAWN, WITHDRAWN, WITHDRAWN, COMPLETED),
            withdraw=((STOP_SESSIONS, 11), (STOP_QUESTIONNAIRES, 24)),
        ),
        # Waitlisted: answers the baseline and week 2, then withdraws and erases, before
        # the waitlist ends.
        randomised(
            "en",
            needs="waitlist",
            outcomes={"week-2": COMPLETED},
            withdraw=((ERASE, 17),),
        ),
        # Waitlisted, crosses over, then the whole course and every timepoint.
        randomised("en", needs="waitlist", sessions=4, outcomes=EVERY_WITH_SESSION),
        randomised("en", needs="waitlist", sessions=5, no_show=True, outcomes=EVERY_WITH_SESSION),
        # Waitlisted: crosses over, two sessions, and stops questionnaires between them.
        randomised(
            "en",
            needs="waitlist",
            sessions=2,
            outcomes=outcomes(COMPLETED, COMPLETED, WITHDRAWN, WITHDRAWN, WITHDRAWN),
            withdraw=((STOP_QUESTIONNAIRES, WAITLIST_DAYS + 3),),
        ),
        *(questionnaires_only("en") for _ in range(5)),
        *(one_then_lost("en") for _ in range(4)),
        *(whole_course("en") for _ in range(4)),
        *(two_and_a_no_show("en") for _ in range(3)),
        *(nothing_more("en") for _ in range(3)),
        *(five_extended("en") for _ in range(2)),
        stops_questionnaires("en"),
        stops_sessions_at_once("en"),
    ]
    de = [
        *(questionnaires_only("de") for _ in range(2)),
        *(one_then_lost("de") for _ in range(2)),
        *(whole_course("de") for _ in range(3)),
        two_and_a_no_show("de"),
        *(nothing_more("de") for _ in range(2)),
        five_extended("de"),
        stops_sessions_at_once("de"),
    ]
    # No therapist works at the Prague site here: these never have a session.
    cs = [questionnaires_only("cs"), nothing_more("cs"), stops_questionnaires("cs")]
    return never + en + de + cs


def answers_for(rng: random.Random, safety: bool = False) -> dict[str, str]:
    """Return answers to the wellbeing questionnaire, varied; only ``safety`` fires a rule."""
    options = list(VALUES)
    chosen = {item.id: rng.choice(options) for item in WELLBEING.items}
    chosen["urge"] = rng.choice(options[:3])  # "often" would fire a rule
    chosen["self-harm"] = "sometimes" if safety else rng.choice(options[:2])
    return chosen


def scores_of(answers: dict[str, str]) -> dict[str, int]:
    """Score wellbeing answers from the definition's lists of items and option values."""
    return {
        name: sum(VALUES[answers[item]] for item in items)
        for name, items in WELLBEING.scores.items()
    }


def midnight(day: datetime.date) -> int:
    return int(datetime.datetime.combine(day, datetime.time(0), datetime.UTC).timestamp())


def at(day: datetime.date, hour: int, minute: int = 0) -> int:
    return midnight(day) + hour * 3600 + minute * 60


class Trial:
    """A started example study, its therapists, and a clock that moves day by day."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.settings = study_settings(folder / "instance", EXAMPLE)
        self.study_public, self.study_secret = new_recipient_keypair()
        self.recipient_public, self.recipient_secret = new_recipient_keypair()
        start(self.settings, STUDY, self.study_public, START, 40)
        self.db = connect(self.settings.database_path)
        self.rng = random.Random(17)
        self.plans = plans()
        #: Randomised plans not yet given to anyone, by language.
        self.pools: dict[str, list[Plan]] = {}
        for plan in self.plans:
            if plan.randomised:
                self.pools.setdefault(plan.language, []).append(plan)
        #: Each randomised participant's therapist and hour of the day.
        self.places: dict[str, tuple[str, bytes, int]] = {}
        self.therapists = [self.add_therapist(f"Therapist {n}") for n in range(3)]
        self.actions: list[tuple[int, int, Callable[[int], None]]] = []
        self.order = itertools.count()
        self.env = stillroom_env(self.settings.data_dir, 0, {"STILLROOM_STUDY": str(EXAMPLE)})
        #: The first recipient's archive and the folder it was opened into.
        self.archive = folder / "first.sealed"
        self.opened = folder / "first"

    def add_therapist(self, name: str) -> tuple[str, bytes]:
        """Add and enrol a therapist of the Berlin site; return their id and secret key."""
        now = midnight(START) - 86400
        enrolment = therapists.add_therapist(
            self.db, name, ("de", "en"), "Europe/Berlin", now, site="berlin"
        )
        secret = pyotp.random_base32()
        return therapists.enrol(
            self.db,
            DERIVER,
            enrolment.token,
            generate_passphrase("de"),
            secret,
            pyotp.TOTP(secret).at(now),
            now,
        )

    # --- The clock ---------------------------------------------------------------------

    def when(self, moment: int, action: Callable[[int], None]) -> None:
        heapq.heappush(self.actions, (moment, next(self.order), action))

    def run(self) -> None:
        """Move the clock through every day: each day's actions, then the maintenance pass."""
        slots = list(self.plans)
        random.Random(5).shuffle(slots)
        for number, slot in enumerate(slots):
            day = START + datetime.timedelta(days=number % INTAKE_DAYS)
            self.when(at(day, 8, number), lambda now, slot=slot: self.intake(slot, now))
        day = START
        while day <= LAST_DAY:
            end = at(day, 23, 59)
            while self.actions and self.actions[0][0] < end:
                moment, _, action = heapq.heappop(self.actions)
                action(moment)
            purge(self.db, end, self.settings)
            day += datetime.timedelta(days=1)
        assert not self.actions, "the trial ran out of days"

    # --- Intake ------------------------------------------------------------------------

    def intake(self, slot: Plan, now: int) -> None:
        """Take a new account through intake as the pages do; randomised ones get their plan."""
        day = course.day_of(now)
        account = create_account(
            self.db, DERIVER, LOOKUP_KEY, generate_passphrase("en"), day.isoformat()
        )
        pid = account.participant_id
        found = intake.enrol(self.db, pid, STUDY.stratum_of(slot.language))
        intake.read_information(self.db, pid)
        version = STUDY.consent(STUDY.consent_current)
        shown = (version.version, version.texts[slot.language].sha256)
        ticked = {"participate", "questionnaires"}
        intake.give_consent(self.db, STUDY, pid, slot.language, ticked, day, shown)
        if slot.screening is None:
            slot.begin(account, found.pseudonym, day)
            return
        screening = intake.Form(SCREENING, intake.SCREENING)
        self.fill(pid, account.secret_key, screening, slot.screening)
        eligible = intake.submit_screening(self.db, STUDY, pid, slot.screening, day)
        assert eligible == (slot.screening == ELIGIBLE)
        entered = {intake.SCREENING: (day, slot.screening)}
        baseline = intake.Form(WELLBEING, STUDY.schedule[0].id)
        if not slot.randomised:
            slot.begin(account, found.pseudonym, day)
            slot.entered.update(entered)
            if slot.began_baseline:
                self.fill(pid, account.secret_key, baseline, answers_for(self.rng), only=1)
            for level, after in slot.withdraw:
                self.when(at(day + datetime.timedelta(days=after), 7), self.withdrawal(slot, level))
            return
        answers = answers_for(self.rng)
        self.fill(pid, account.secret_key, baseline, answers)
        arm, fired = intake.submit_baseline(self.db, STUDY, pid, answers, day)
        assert fired == []
        plan = self.take(slot.language, arm)
        plan.begin(account, found.pseudonym, day)
        plan.arm = arm
        plan.entered.update(entered)
        plan.entered[baseline.timepoint] = (day, answers)
        self.follow(plan)

    def take(self, language: str, arm: str) -> Plan:
        """Give the randomised participant the first plan that needs their arm, else any."""
        pool = self.pools[language]
        plan = next((p for p in pool if p.needs == arm), None) or next(
            p for p in pool if p.needs is None
        )
        pool.remove(plan)
        return plan

    def fill(
        self,
        pid: str,
        secret_key: bytes,
        form: intake.Form,
        answers: dict[str, str],
        only: int | None = None,
    ) -> dict[str, str]:
        """Answer the form's pages (or the first ``only`` of them) as the form page does."""
        (public_key,) = self.db.execute(
            "SELECT public_key FROM participants WHERE id = ?", [pid]
        ).fetchone()
        count = len(pages(form.instrument))
        saved: dict[str, str] = {}
        for number in range(count if only is None else only):
            saved = intake.save_page(
                self.db, pid, bytes(public_key), secret_key, form, number, answers
            )
        return saved

    # --- After randomisation -----------------------------------------------------------

    def follow(self, plan: Plan) -> None:
        """Put the plan's sessions, assessments and withdrawals on the clock."""
        place = len(self.places)
        therapist_id, therapist_key = self.therapists[place % len(self.therapists)]
        self.places[plan.participant_id] = (therapist_id, therapist_key, 6 + place // 3)
        for number in range(1, plan.sessions + 1 + plan.no_show):
            day = plan.session_day(number)
            self.when(at(day - datetime.timedelta(days=1), 12), self.booking(plan, number))
        for timepoint, outcome in plan.outcomes.items():
            if outcome != COMPLETED:
                continue  # a missed or withdrawn window is left alone: the server notes it
            anchor = plan.anchor(timepoint)
            answers = answers_for(self.rng, safety=timepoint == plan.safety_at)
            first = at(anchor + datetime.timedelta(days=1), 10)
            self.when(first, self.first_sitting(plan, timepoint, answers))
            second = at(anchor + datetime.timedelta(days=2), 10)
            self.when(second, self.second_sitting(plan, timepoint, answers))
        for level, after in plan.withdraw:
            self.when(
                at(plan.day + datetime.timedelta(days=after), 7), self.withdrawal(plan, level)
            )

    def due_form(self, plan: Plan, timepoint: str, day: datetime.date) -> intake.Form:
        """Return the form the questionnaire page offers on ``day``: it must be the planned one."""
        found = intake.enrolment(self.db, plan.participant_id)
        assert found is not None
        offered = intake.assessment_form(self.db, STUDY, found, day)
        assert offered is not None, (timepoint, day)
        form, _due = offered
        assert form.timepoint == timepoint
        return form

    def first_sitting(self, plan: Plan, timepoint: str, answers: dict[str, str]) -> Callable:
        def act(now: int) -> None:
            form = self.due_form(plan, timepoint, course.day_of(now))
            self.fill(plan.participant_id, plan.secret_key, form, answers, only=1)

        return act

    def second_sitting(self, plan: Plan, timepoint: str, answers: dict[str, str]) -> Callable:
        def act(now: int) -> None:
            day = course.day_of(now)
            form = self.due_form(plan, timepoint, day)
            saved = self.fill(plan.participant_id, plan.secret_key, form, answers)
            assert saved == answers  # the first sitting's page was kept
            fired = intake.submit_assessment(
                self.db, STUDY, plan.participant_id, timepoint, saved, day
            )
            assert fired == (["self-harm-sometimes"] if timepoint == plan.safety_at else [])
            plan.entered[timepoint] = (day, answers)

        return act

    def booking(self, plan: Plan, number: int) -> Callable:
        """The day before: the therapist offers the hour, the participant books it."""

        def act(now: int) -> None:
            therapist_id, _, hour = self.places[plan.participant_id]
            day = plan.session_day(number)
            minutes = 50
            [slot] = publish_slots(
                self.db, therapist_id, [at(day, hour)], minutes, ("de", "en"), ("de", "en"), now
            )
            course.cross_over_if_due(self.db, plan.participant_id, now, STUDY)
            refused = course.may_book(self.db, plan.participant_id, now, self.settings, STUDY)
            assert refused is None, refused
            appointment = course.book_in_course(
                self.db, plan.participant_id, slot, plan.language, now, self.settings, STUDY
            )
            attended = number <= plan.sessions
            self.when(at(day, hour, 10), self.session(plan, appointment, number, attended))

        return act

    def session(self, plan: Plan, appointment_id: str, number: int, attended: bool) -> Callable:
        """During the chat: the participant writes; the therapist too, if it is a session."""

        def act(now: int) -> None:
            therapist_key = self.places[plan.participant_id][1]
            meeting = chat.appointment_for(
                self.db, "participant", plan.participant_id, appointment_id
            )
            settings = self.settings
            timing = (now, settings.chat_opens_minutes_before, settings.message_retention_days)
            chat.send_message(self.db, meeting, "participant", plan.secret_key, HELLO, *timing)
            minutes = (meeting.ends_at - meeting.starts_at) // 60
            if attended:
                chat.send_message(self.db, meeting, "therapist", therapist_key, "Welcome", *timing)
                if plan.extended and number == 1:
                    assert chat.extend_chat(self.db, meeting, now)
                    minutes += chat.EXTENSION_MINUTES
            plan.appointments.append((number, course.day_of(now), attended, minutes))

        return act

    def withdrawal(self, plan: Plan, level: str) -> Callable:
        def act(now: int) -> None:
            intake.withdraw(self.db, plan.participant_id, level, course.day_of(now), now)

        return act

    # --- The commands --------------------------------------------------------------------

    def command(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run a ``stillroom study`` command as the study team does."""
        return run_study(self.env, *args, stdin=stdin)

    def export(self, name: str, recipient_public: bytes) -> Path:
        """Export to a recipient with the real command; return the archive."""
        key = self.folder / f"{name}.pub"
        key.write_text(base64.b64encode(recipient_public).decode() + "\n")
        archive = self.folder / f"{name}.sealed"
        secret = base64.b64encode(self.study_secret).decode() + "\n"
        done = self.command("export", "--to", str(key), str(archive), stdin=secret)
        assert done.returncode == 0, done.stderr
        return archive

    def open(self, archive: Path, folder: Path, secret: bytes) -> subprocess.CompletedProcess[str]:
        """Open an archive with the real command, as a recipient does."""
        key = self.folder / f"{folder.name}.secret"
        key.write_text(base64.b64encode(secret).decode() + "\n")
        (signing,) = self.db.execute("SELECT signing_public_key FROM study").fetchone()
        return self.command(
            "open-export",
            str(archive),
            "--secret-key",
            str(key),
            "--signing-key",
            base64.b64encode(signing).decode(),
            str(folder),
        )

    def their_pseudonym(self, plan: Plan, recipient_public: bytes) -> str:
        """Return the pseudonym a recipient sees for a plan, as the study team can compute it."""
        seed = study_log.read_signing_key(self.settings.data_dir)
        assert seed is not None
        secret = export.derived_secret(seed, "pseudonyms")
        return export.recipient_pseudonym(secret, export.key_id(recipient_public), plan.pseudonym)


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Any:
    """The whole trial, run once; its first recipient's export, opened."""
    made = Trial(tmp_path_factory.mktemp("trial"))
    try:
        made.run()
        made.export("first", made.recipient_public)
        opened = made.open(made.archive, made.opened, made.recipient_secret)
        assert opened.returncode == 0, opened.stderr
        yield made
    finally:
        made.db.close()


def table(folder: Path, name: str) -> list[dict[str, str]]:
    with (folder / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- CONSORT ----------------------------------------------------------------------------


def expected_flow(known: list[Plan]) -> dict[str, Any]:
    """Count every box from the plans alone."""
    screened = [plan for plan in known if plan.screening is not None]
    randomised = [plan for plan in screened if plan.randomised]
    arms = {}
    for arm in STUDY.arms:
        mine = [plan for plan in randomised if plan.arm == arm.id]
        arms[arm.id] = {
            "allocated": len(mine),
            "received": sum(plan.sessions >= 1 for plan in mine),
            "completed_course": sum(plan.sessions >= STUDY.course.sessions_min for plan in mine),
            "timepoints_completed": {
                point.id: sum(
                    point.id == STUDY.schedule[0].id or plan.outcomes.get(point.id) == COMPLETED
                    for plan in mine
                )
                for point in STUDY.schedule
            },
            "withdrawn": {
                level: sum(plan.level == level for plan in mine) for level in consort.LEVELS
            },
            "lost_to_follow_up": sum(
                plan.level is None and plan.outcomes.get("week-8") == MISSED for plan in mine
            ),
            "analysed": sum(not plan.erased for plan in mine),
        }
    eligible = [plan for plan in screened if plan.screening == ELIGIBLE]
    reasons = {
        consort.NOT_ELIGIBLE: len(screened) - len(eligible),
        consort.WITHDREW: sum(not p.randomised and bool(p.withdraw) for p in eligible),
        consort.LEFT: sum(not p.randomised and not p.withdraw for p in eligible),
    }
    return {
        "assessed": len(screened),
        "excluded": sum(reasons.values()),
        "excluded_reasons": reasons,
        "randomised": len(randomised),
        "arms": arms,
    }


def test_the_consort_flow_of_the_trial_matches_the_plans_box_by_box(trial):
    done = trial.command("consort", "--json", "--exact")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["total"] == expected_flow(trial.plans)
    for stratum in STUDY.strata():
        mine = [plan for plan in trial.plans if STUDY.stratum_of(plan.language) == stratum]
        assert found["strata"][stratum] == expected_flow(mine), stratum
    total = found["total"]
    assert (total["assessed"], total["randomised"]) == (58, 45)
    # Every kind of box was reached, in both arms where it can be.
    for arm in total["arms"].values():
        assert arm["received"] and arm["completed_course"] and arm["lost_to_follow_up"]
    assert all(
        sum(arm["withdrawn"][level] for arm in total["arms"].values()) for level in consort.LEVELS
    )
    assert all(total["excluded_reasons"].values())


# --- The export ---------------------------------------------------------------------------


def test_the_export_holds_exactly_what_each_participant_entered(trial):
    folder, public = trial.opened, trial.recipient_public
    kept = [plan for plan in trial.plans if not plan.erased]
    name = {trial.their_pseudonym(plan, public): plan for plan in kept}
    seed = study_log.read_signing_key(trial.settings.data_dir)
    codes = export.arm_codes(STUDY, seed)

    participants = {row["pseudonym"]: row for row in table(folder, "participants.csv")}
    assert set(participants) == set(name)
    for pseudonym, plan in name.items():
        row = participants[pseudonym]
        assert row["stratum"] == STUDY.stratum_of(plan.language)
        eligible = "" if plan.screening is None else ("yes" if plan.screening == ELIGIBLE else "no")
        assert row["eligible"] == eligible
        assert row["arm"] == ("" if plan.arm is None else codes[plan.arm])
        waits = plan.arm is not None and STUDY.arm(plan.arm).gets == "waitlist"
        assert row["days_to_crossover"] == (str(WAITLIST_DAYS) if waits else "")
        stops = dict(plan.withdraw)
        for level, column in (
            (STOP_SESSIONS, "days_to_stop_sessions"),
            (STOP_QUESTIONNAIRES, "days_to_stop_questionnaires"),
        ):
            wanted = "" if level not in stops or not plan.randomised else str(stops[level])
            assert row[column] == wanted, (column, plan)
        assert row["withdrawal_level"] == (plan.withdraw[-1][0] if plan.withdraw else "")

    assessments: dict[str, dict[str, dict[str, str]]] = {}
    for row in table(folder, "assessments.csv"):
        mine = assessments.setdefault(row["pseudonym"], {})
        assert row["timepoint"] not in mine  # one row per timepoint
        mine[row["timepoint"]] = row
    for pseudonym, plan in name.items():
        rows = assessments.get(pseudonym, {})
        closed = {tp: status for tp, status in plan.outcomes.items() if status != COMPLETED}
        assert set(rows) == set(plan.entered) | set(closed), plan
        for timepoint, (day, answers) in plan.entered.items():
            row = rows[timepoint]
            assert row["status"] == COMPLETED
            since = (day - plan.day).days if plan.randomised else ""
            assert row["days_since_randomisation"] == str(since)
            instrument = SCREENING if timepoint == intake.SCREENING else WELLBEING
            assert {item: row[f"{instrument.id}.{item}"] for item in answers} == answers
            if instrument is WELLBEING:
                scores = {name: int(row[f"wellbeing.score.{name}"]) for name in WELLBEING.scores}
                assert scores == scores_of(answers)
        for timepoint, status in closed.items():
            row = rows[timepoint]
            first_closed = plan.closes(timepoint) + datetime.timedelta(days=1)
            assert row["status"] == status, (timepoint, plan)
            assert row["days_since_randomisation"] == str((first_closed - plan.day).days)
            assert not any(row[f"wellbeing.{item.id}"] for item in WELLBEING.items)

    sessions: dict[str, list[tuple[str, ...]]] = {}
    for row in table(folder, "sessions.csv"):
        sessions.setdefault(row["pseudonym"], []).append(
            (row["session"], row["days_since_randomisation"], row["attended"], row["minutes"])
        )
    for pseudonym, plan in name.items():
        wanted = [
            (
                str(number),
                str((day - plan.day).days),
                "yes" if attended else "no",
                str(minutes) if attended else "",
            )
            for number, day, attended, minutes in plan.appointments
        ]
        assert sessions.get(pseudonym, []) == wanted, plan
        assert len(wanted) == plan.sessions + plan.no_show
    assert set(sessions) <= set(name)

    # The safety rule fired once, at week 2, and went into the log on the day it was sent.
    [fired] = [plan for plan in kept if plan.safety_at]
    safety = [row for row in table(folder, "events.csv") if row["event"] == "safety-rule"]
    assert [(row["pseudonym"], json.loads(row["detail"])) for row in safety] == [
        (
            trial.their_pseudonym(fired, public),
            {"rule": "self-harm-sometimes", "timepoint": "week-2"},
        )
    ]
    assert safety[0]["days_since_randomisation"] == str(
        (fired.entered["week-2"][0] - fired.day).days
    )
    # No chat text leaves, nor the server's own pseudonyms.
    text = "".join((folder / file_name).read_text() for file_name in export.FILES)
    assert HELLO not in text
    assert not any(plan.pseudonym in text for plan in trial.plans)


def test_the_safety_rule_at_week_2_flags_that_participant_to_their_therapist_alone(trial):
    [fired] = [plan for plan in trial.plans if plan.safety_at]
    therapist_id = trial.places[fired.participant_id][0]
    [flag] = safety.open_flags(trial.db)
    assert (flag.pseudonym, flag.rule, flag.timepoint) == (
        fired.pseudonym,
        "self-harm-sometimes",
        "week-2",
    )
    assert flag.day == fired.entered["week-2"][0] and flag.has_therapist
    assert safety.therapist_flags(trial.db, therapist_id, fired.participant_id) == [flag]
    assert safety.lead_list(trial.db, "berlin") == []  # they have a therapist


def test_the_erased_are_in_no_file_and_the_manifest_counts_them(trial):
    folder = trial.opened
    erased = [plan for plan in trial.plans if plan.erased]
    assert len(erased) == 2 and any(plan.entered for plan in erased)
    for file_name in (*export.FILES, export.MANIFEST):
        text = (folder / file_name).read_text()
        for plan in erased:
            assert plan.pseudonym not in text, file_name
            assert trial.their_pseudonym(plan, trial.recipient_public) not in text, file_name
    manifest = json.loads((folder / export.MANIFEST).read_text())
    assert manifest["erased_participants"] == len(erased)
    assert manifest["participants"] == len(trial.plans) - len(erased)


def test_nothing_is_logged_of_the_erased_after_they_erased(trial):
    for plan in (plan for plan in trial.plans if plan.erased):
        rows = [entry for entry in study_log.entries(trial.db) if entry.pseudonym == plan.pseudonym]
        assert rows[-1].event == "withdrawal" and rows[-1].detail["level"] == ERASE, [
            entry.event for entry in rows
        ]


def test_a_second_recipients_pseudonyms_never_match_the_firsts(trial):
    other_public, other_secret = new_recipient_keypair()
    archive = trial.export("second", other_public)
    folder = trial.folder / "second"
    opened = trial.open(archive, folder, other_secret)
    assert opened.returncode == 0, opened.stderr
    firsts = {row["pseudonym"] for row in table(trial.opened, "participants.csv")}
    seconds = {row["pseudonym"] for row in table(folder, "participants.csv")}
    assert len(firsts) == len(seconds) == len(trial.plans) - 2
    assert not firsts & seconds
    # Nor does any pseudonym of one appear anywhere in the other's files.
    text = "".join((folder / file_name).read_text() for file_name in export.FILES)
    assert not any(pseudonym in text for pseudonym in firsts)
    # The same data otherwise: the same answers, in as many rows.
    for file_name in ("assessments.csv", "sessions.csv", "events.csv"):
        assert len(table(trial.opened, file_name)) == len(table(folder, file_name))


def test_a_tampered_archive_is_refused_and_writes_nothing(trial):
    sealed = bytearray(trial.archive.read_bytes())
    sealed[len(sealed) // 3] ^= 0x01
    tampered = trial.folder / "tampered.sealed"
    tampered.write_bytes(bytes(sealed))
    folder = trial.folder / "tampered"
    refused = trial.open(tampered, folder, trial.recipient_secret)
    assert refused.returncode == 1
    assert "does not open" in refused.stderr
    assert not folder.exists()
    # The untouched archive still opens.
    assert (
        trial.open(trial.archive, trial.folder / "untouched", trial.recipient_secret).returncode
        == 0
    )
