"""The assessment schedule of the example study, on the real database, with days given:
windows from randomisation in both arms, missed windows logged once, withdrawals,
erasure, a timepoint tied to the 2nd session, and answers refused after the window."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database
from test_study_course import allocate, in_berlin, participant_ids
from test_study_course import study_settings as study_settings  # fixtures, used below
from test_study_course import study_world as study_world

from stillroom.crypto.kdf import FAST_FOR_TESTS, KeyDeriver
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.accounts import create_account
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment, course, intake, schedule
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import Study, load_study

from support import FAST_ARGON2, SLOT, rows

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
STUDY = load_study(EXAMPLE)
START = datetime.date(2027, 3, 1)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}
WELLBEING = {item.id: "rarely" for item in STUDY.instruments["wellbeing"].items}
NUMBERS = itertools.count()


def days(n: int) -> datetime.timedelta:
    return datetime.timedelta(days=n)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings.load(
        {}, data_dir=tmp_path / "instance", disk_reserve_mib=1, study=str(EXAMPLE), **FAST_ARGON2
    )
    prepare_instance(settings)
    return settings


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = connect(settings.database_path)
    keys = (new_recipient_keypair()[0], new_recipient_keypair()[0])
    amendment.start(database, settings.data_dir, STUDY, START, keys, 20)
    yield database
    database.close()


def join(db: Database, study: Study, day: datetime.date) -> tuple[str, str, str]:
    """Make an account and take it through intake on ``day``; return its id, pseudonym, arm."""
    deriver = KeyDeriver(FAST_FOR_TESTS, concurrency=1, wait_seconds=5)
    number = next(NUMBERS)
    account = create_account(db, deriver, bytes(32), f"seven words for account {number} here", "")
    pid = account.participant_id
    found = intake.enrol(db, pid, study.stratum_of("en"))
    intake.read_information(db, pid)
    text = study.consent().texts["en"]
    shown = (study.consent_current, text.sha256)
    intake.give_consent(db, study, pid, "en", {"participate", "questionnaires"}, day, shown)
    assert intake.submit_screening(db, study, pid, ELIGIBLE, day)
    arm, _ = intake.submit_baseline(db, study, pid, WELLBEING, day)
    return pid, found.pseudonym, arm


def attend(db: Database, pseudonym: str, session: int, day: datetime.date) -> None:
    """Log an attended session, as counting the course's chats does."""
    with transaction(db):
        detail = {"minutes": 60, "session": session}
        study_log.append(db, "session-attended", day, pseudonym, detail)


def missed_rows(db: Database) -> list[tuple[str | None, str, str, str]]:
    return [
        (entry.pseudonym, entry.day, str(entry.detail["timepoint"]), str(entry.detail["reason"]))
        for entry in study_log.entries(db, "assessment-missed")
    ]


def shape(windows: list[schedule.Window]) -> list[tuple]:
    return [(window.timepoint.id, window.opens, window.closes) for window in windows]


def test_windows_are_the_same_in_both_arms_and_stay_so_after_the_crossover(db):
    arms: dict[str, str] = {}
    while set(arms) != {"chat", "waitlist"}:
        _, pseudonym, arm = join(db, STUDY, START)
        arms.setdefault(arm, pseudonym)
    seen = {arm: shape(schedule.windows(db, STUDY, name, START)) for arm, name in arms.items()}
    assert seen["chat"] == seen["waitlist"]
    week_2 = dict((point, (opens, closes)) for point, opens, closes in seen["chat"])["week-2"]
    assert week_2 == (START + days(12), START + days(21))  # week 2, from -2 to +7 days
    # The wait ends after four weeks; the windows are still counted from randomisation.
    after_wait = course.midnight(START + days(29))
    assert course.cross_over_due(db, after_wait, STUDY) >= 1  # every waitlisted one
    crossed = shape(schedule.windows(db, STUDY, arms["waitlist"], START + days(29)))
    assert crossed == seen["chat"]


def test_only_the_baseline_is_done_at_intake_and_week_2_is_due_in_its_window(db):
    pid, pseudonym, _ = join(db, STUDY, START)
    states = {w.timepoint.id: w.state for w in schedule.windows(db, STUDY, pseudonym, START)}
    assert states["baseline"] == schedule.COMPLETED
    assert states["week-2"] == schedule.UPCOMING
    assert states["after-session-2"] == schedule.NOT_REACHED
    assert schedule.due(db, STUDY, pid, START + days(11)) is None
    due = schedule.due(db, STUDY, pid, START + days(12))
    assert due == schedule.Due("week-2", "wellbeing", START + days(21), 5, None)


def test_a_closed_window_is_logged_as_missed_once_on_the_day_after_it_closed(db, settings):
    _, pseudonym, _ = join(db, STUDY, START)
    assert schedule.record_missed(db, STUDY, START + days(21)) == 0  # its last day
    assert schedule.record_missed(db, STUDY, START + days(25)) == 1
    assert schedule.record_missed(db, STUDY, START + days(25)) == 0
    # The maintenance pass runs it too, and adds nothing for the same window.
    purge(db, course.midnight(START + days(26)), settings)
    assert missed_rows(db) == [(pseudonym, (START + days(22)).isoformat(), "week-2", "missed")]
    state = {w.timepoint.id: w.state for w in schedule.windows(db, STUDY, pseudonym, START)}
    assert state["week-2"] == schedule.MISSED


def test_someone_randomised_before_the_baseline_was_logged_is_never_missing_it(db, settings):
    # A study started before the baseline's answer was logged as completed: its
    # participants' baselines are in, since allocation follows them, and must not be
    # written to the log as missed once the schedule runs.
    deriver = KeyDeriver(FAST_FOR_TESTS, concurrency=1, wait_seconds=5)
    account = create_account(db, deriver, bytes(32), "seven words for an earlier one here", "")
    pseudonym = allocate(settings, account.participant_id, "chat", START)
    assert schedule.record_missed(db, STUDY, START + days(25)) == 1
    assert missed_rows(db) == [(pseudonym, (START + days(22)).isoformat(), "week-2", "missed")]
    state = {w.timepoint.id: w.state for w in schedule.windows(db, STUDY, pseudonym, START)}
    assert state["baseline"] == schedule.COMPLETED


def test_after_stopping_questionnaires_later_windows_are_logged_as_withdrawn(db):
    early, early_name, _ = join(db, STUDY, START)
    late, late_name, _ = join(db, STUDY, START)
    intake.withdraw(db, early, intake.STOP_QUESTIONNAIRES, START + days(5), 0)
    intake.withdraw(db, late, intake.STOP_QUESTIONNAIRES, START + days(23), 0)
    assert schedule.due(db, STUDY, early, START + days(13)) is None
    schedule.record_missed(db, STUDY, START + days(70))
    rows = missed_rows(db)
    timed = ["week-2", "week-4", "week-6", "week-8"]  # after-session-2 was never reached
    assert [(point, reason) for name, _, point, reason in rows if name == early_name] == [
        (point, "withdrawn") for point in timed
    ]
    # week-2 had closed, unanswered, before they stopped: that one was missed.
    assert [(point, reason) for name, _, point, reason in rows if name == late_name] == [
        ("week-2", "missed"),
        *((point, "withdrawn") for point in timed[1:]),
    ]


def test_stopping_questionnaires_deletes_the_unsent_answers_at_once(db):
    pid, _, _ = join(db, STUDY, START)
    form = intake.assessment_form(db, STUDY, intake.enrolment(db, pid), START + days(13))
    assert form is not None and form[1].timepoint == "week-2"
    keys = new_recipient_keypair()
    first_page = {item.id: "often" for item in intake.form_page(form[0], 0)}
    intake.save_page(db, pid, *keys, form[0], 0, first_page)
    assert intake.enrolment(db, pid).draft is not None
    # Their answers so far are kept for nothing: no form of theirs will be sent again.
    intake.withdraw(db, pid, intake.STOP_QUESTIONNAIRES, START + days(14), 0)
    stopped = intake.enrolment(db, pid)
    assert stopped.draft is None and stopped.draft_form is None


def test_someone_who_withdrew_and_erased_gets_no_more_rows(db):
    pid, pseudonym, _ = join(db, STUDY, START)
    intake.withdraw(db, pid, intake.ERASE, START + days(5), 0)
    before = len(study_log.entries(db))
    assert schedule.record_missed(db, STUDY, START + days(70)) == 0
    assert len(study_log.entries(db)) == before
    assert schedule.due(db, STUDY, pid, START + days(13)) is None
    assert not [row for row in missed_rows(db) if row[0] == pseudonym]


def test_the_timepoint_after_the_2nd_session_is_due_only_once_it_happened(db):
    pid, pseudonym, _ = join(db, STUDY, START)
    attend(db, pseudonym, 1, START + days(3))
    assert schedule.due(db, STUDY, pid, START + days(4)) is None
    attend(db, pseudonym, 2, START + days(10))
    due = schedule.due(db, STUDY, pid, START + days(10))
    assert due == schedule.Due("after-session-2", "wellbeing", START + days(17), 5, 2)
    # On day 13 week-2 is open too; the one that closes first comes first.
    assert schedule.due(db, STUDY, pid, START + days(13)) == due
    intake.submit_assessment(db, STUDY, pid, "after-session-2", WELLBEING, START + days(13))
    assert schedule.due(db, STUDY, pid, START + days(13)).timepoint == "week-2"


def test_a_session_tied_timepoint_whose_session_never_came_is_never_missed(db):
    _, pseudonym, _ = join(db, STUDY, START)
    attend(db, pseudonym, 1, START + days(3))
    schedule.record_missed(db, STUDY, START + days(200))
    assert "after-session-2" not in [row[2] for row in missed_rows(db)]


def test_answers_are_refused_once_the_window_closed_or_after_they_were_sent(db):
    pid, pseudonym, _ = join(db, STUDY, START)
    with pytest.raises(intake.WrongStepError):  # not open yet
        intake.submit_assessment(db, STUDY, pid, "week-2", WELLBEING, START + days(11))
    with pytest.raises(intake.WindowClosedError):
        intake.submit_assessment(db, STUDY, pid, "week-2", WELLBEING, START + days(22))
    assert intake.submit_assessment(db, STUDY, pid, "week-4", WELLBEING, START + days(30)) == []
    with pytest.raises(intake.WrongStepError):  # sent twice
        intake.submit_assessment(db, STUDY, pid, "week-4", WELLBEING, START + days(31))
    completed = [
        (entry.pseudonym, entry.day, entry.detail)
        for entry in study_log.entries(db, "assessment-completed")
    ]
    assert completed[-1] == (
        pseudonym,
        (START + days(30)).isoformat(),
        {"timepoint": "week-4", "instrument": "wellbeing"},
    )
    assert len(completed) == 2  # the baseline and week-4
    stored = db.execute(
        "SELECT timepoint, day FROM study_answers WHERE pseudonym = ? ORDER BY id", [pseudonym]
    ).fetchall()
    assert stored[-1] == ("week-4", (START + days(30)).isoformat())
    assert schedule.record_missed(db, STUDY, START + days(40)) == 1  # week-2, not week-4


def test_the_account_and_chat_pages_name_the_questionnaire_after_the_2nd_session(
    study_world, study_settings, clock
):
    auth, therapist = study_world
    therapist.create()
    in_berlin(study_settings)
    assert therapist.publish("2027-01-18", "18:00").status_code == 302
    auth.create()
    [participant] = participant_ids(study_settings)
    pseudonym = allocate(study_settings, participant, "chat", datetime.date(2027, 1, 8))
    db = connect(study_settings.database_path)
    try:
        with transaction(db):
            done = {"timepoint": "baseline", "instrument": "wellbeing"}
            study_log.append(db, "assessment-completed", datetime.date(2027, 1, 8), pseudonym, done)
        [slot] = SLOT.findall(auth.client.get("/en/book").get_data(as_text=True))
        assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302
        [[appointment]] = rows(study_settings, "SELECT id FROM appointments")
        chat = auth.client.get(f"/en/chat/{appointment}").get_data(as_text=True)
        assert 'id="assessment-due"' not in chat  # nothing due on 15 January yet
        attend(db, pseudonym, 1, datetime.date(2027, 1, 9))
        attend(db, pseudonym, 2, datetime.date(2027, 1, 14))
    finally:
        db.close()
    account = auth.client.get("/en/account").get_data(as_text=True)
    assert "A short questionnaire after your 2nd session is waiting for you." in account
    assert "21 January 2027" in account and "about 5 minutes" in account
    chat = auth.client.get(f"/en/chat/{appointment}").get_data(as_text=True)
    assert 'id="assessment-due"' in chat and 'href="/en/study/questions"' in chat
    assert 'id="chat"' in chat and "compose" in chat  # the chat itself is all there
    feed = auth.client.get(f"/en/chat/{appointment}/feed").get_data(as_text=True)
    assert "questionnaire" not in feed
