"""A study's intake and withdrawal, as Firefox ESR with JavaScript off goes through them
on the real server with ``STILLROOM_STUDY`` set."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from babel.dates import format_date
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_course import DAY, MovedServer
from test_browser_course import moved as moved  # the server whose clock a test moves
from test_browser_nojs import (
    PREFS,
    create_account,
    log_in,
    log_out,
    path_of,
    press,
    running_firefox,
    visit,
)
from test_study_amendment import add_consent_version, key_file, stillroom

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect
from stillroom.webapp.study import amendment, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.study.questionnaires import pages
from stillroom.webapp.times import DATE_LOCALES

from support import LiveServer, start_server, stop_server

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
STUDY = load_study(EXAMPLE)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}
#: Enough participants that both arms appear: blocks of at most 6 hold both arms 1:1.
MOST_PARTICIPANTS = 12
CRISIS_LINE = "Listening line 0800 111 0 111"


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    with running_firefox(PREFS, "gecko-study.log") as browser:
        yield browser


@pytest.fixture(scope="module")
def study_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server running the example study, started in its data directory first."""
    root = tmp_path_factory.mktemp("study-live")
    folder = root / "study"
    shutil.copytree(EXAMPLE, folder)
    data_dir = root / "instance"
    prepare_instance(Settings.load({}, data_dir=data_dir, disk_reserve_mib=1))
    db = connect(data_dir / "stillroom.db")
    try:
        amendment.start(
            db,
            data_dir,
            STUDY,
            date.today(),
            (new_recipient_keypair()[0], new_recipient_keypair()[0]),
            40,
        )
    finally:
        db.close()
    server = start_server(
        data_dir, {"STILLROOM_STUDY": str(folder), "STILLROOM_CRISIS_LINES_EN": CRISIS_LINE}
    )
    yield server
    stop_server(server)


def query(server: LiveServer, sql: str, args: tuple = ()) -> list[tuple]:
    db = connect(server.data_dir / "stillroom.db")
    try:
        return db.execute(sql, list(args)).fetchall()
    finally:
        db.close()


def choose(browser: Marionette, answers: dict[str, str]) -> None:
    for item, option in answers.items():
        browser.find_element(By.CSS_SELECTOR, f"input[name='{item}'][value='{option}']").click()


def new_participant(browser: Marionette, server: LiveServer, lang: str) -> str:
    """Start afresh: log out, make a new account, which lands on the study's first step.

    Return the new account's passphrase.
    """
    visit(browser, f"{server.url}/{lang}/")
    logout = browser.find_elements(By.CSS_SELECTOR, "footer form button")
    if logout:  # the participant before logs out
        press(browser, logout[0])
    passphrase = create_account(browser, f"{server.url}/{lang}")
    assert path_of(browser) == f"/{lang}/study/information"
    return passphrase


def through_intake(
    browser: Marionette,
    server: LiveServer,
    lang: str,
    screening: dict[str, str] = ELIGIBLE,
    baseline: dict[str, str] | None = None,
) -> str:
    """Walk a new account through intake; return the path it ends on."""
    new_participant(browser, server, lang)
    return answer_intake(browser, lang, screening, baseline)


def answer_intake(
    browser: Marionette,
    lang: str,
    screening: dict[str, str] = ELIGIBLE,
    baseline: dict[str, str] | None = None,
) -> str:
    """Go through intake from the information page on; return the path it ends on.

    The baseline's answers are each item's first option unless given: no safety rule fires.
    """
    assert browser.find_element(By.CSS_SELECTOR, "header a.help")  # crisis help, on every step
    press(browser, browser.find_element(By.ID, "study-next"))
    assert path_of(browser) == f"/{lang}/study/consent"
    browser.find_element(By.ID, "consent-participate").click()
    browser.find_element(By.ID, "consent-questionnaires").click()
    press(browser, browser.find_element(By.ID, "consent-give"))
    assert len(str(browser.find_element(By.ID, "receipt").text)) == 9
    press(browser, browser.find_element(By.ID, "study-next"))
    assert "1" in str(browser.find_element(By.ID, "form-page").text)
    choose(browser, screening)
    press(browser, browser.find_element(By.ID, "form-next"))
    if path_of(browser) != f"/{lang}/study/questions":
        return path_of(browser)
    instrument = STUDY.instruments[STUDY.schedule[0].instrument]
    chosen = {item.id: instrument.choices(item.id)[0] for item in instrument.items}
    chosen.update(baseline or {})
    for page in pages(instrument):  # one page of the form per POST
        assert path_of(browser) == f"/{lang}/study/questions"
        assert len(browser.find_elements(By.CSS_SELECTOR, "main fieldset")) == len(page)
        choose(browser, {item.id: chosen[item.id] for item in page})
        press(browser, browser.find_element(By.ID, "form-next"))
    return path_of(browser)


def test_intake_in_english_and_german_reaches_both_arms(firefox, study_server):
    seen: dict[str, set[str]] = {}
    for number in range(MOST_PARTICIPANTS):
        lang = ("en", "de")[number % 2]
        assert through_intake(firefox, study_server, lang) == f"/{lang}/study/arm"
        arm = str(firefox.find_element(By.ID, "study-arm").get_attribute("data-arm"))
        seen.setdefault(lang, set()).add(arm)
        if arm == "chat":
            assert firefox.find_elements(By.CSS_SELECTOR, f"a[href='/{lang}/book']")
        else:
            assert "2" in str(firefox.find_element(By.ID, "study-arm").text)  # a day is named
        if all(seen.get(code) == {"chat", "waitlist"} for code in ("en", "de")):
            break
    assert seen == {"en": {"chat", "waitlist"}, "de": {"chat", "waitlist"}}
    (allocated,) = query(study_server, "SELECT count(*) FROM allocations")[0]
    assert allocated == number + 1
    (done,) = query(study_server, "SELECT count(*) FROM study_participants WHERE step = 'done'")[0]
    assert done == allocated
    strata = {row[0] for row in query(study_server, "SELECT stratum FROM allocations")}
    assert strata == {"en-berlin", "de-berlin"}


def test_someone_not_eligible_gets_help_and_no_booking(firefox, study_server):
    ended = through_intake(firefox, study_server, "de", {**ELIGIBLE, "age": "no"})
    assert ended == "/de/study/not-eligible"
    assert firefox.find_element(By.ID, "ineligible")
    assert firefox.find_elements(By.CSS_SELECTOR, "main a[href='/de/help']")
    visit(firefox, f"{study_server.url}/de/book")
    assert path_of(firefox) == "/de/study/not-eligible"  # booking leads back here
    visit(firefox, f"{study_server.url}/de/help")
    assert path_of(firefox) == "/de/help"


def test_a_baseline_that_fires_a_safety_rule_shows_crisis_help_at_once(firefox, study_server):
    ended = through_intake(firefox, study_server, "en", baseline={"self-harm": "often"})
    assert ended == "/en/study/questions"  # the answer to the form itself: nothing in between
    assert firefox.find_element(By.ID, "safety-help")
    main = str(firefox.find_element(By.TAG_NAME, "main").text)
    assert CRISIS_LINE in main and "112" in main
    assert firefox.find_elements(By.CSS_SELECTOR, "main a[href='/en/help']")
    words = STUDY.instruments["wellbeing"].texts["en"]
    assert words.items["self-harm"] not in main  # their answers are not repeated
    assert words.options["frequency"]["often"] not in main
    press(firefox, firefox.find_element(By.ID, "study-next"))
    assert path_of(firefox) == "/en/study/arm"  # the way on, to where the baseline leads
    db = connect(study_server.data_dir / "stillroom.db")
    try:
        entry = study_log.entries(db, "safety-rule")[-1]
        [(step,)] = db.execute(
            "SELECT step FROM study_participants WHERE pseudonym = ?", [entry.pseudonym]
        ).fetchall()
    finally:
        db.close()
    assert entry.detail == {"rule": "self-harm-sometimes", "timepoint": "baseline"}
    assert step == intake.DONE


@pytest.mark.parametrize("level", ["stop-sessions", "stop-questionnaires", "erase"])
def test_withdrawal_at_each_level_is_one_form_away(firefox, study_server, level):
    assert through_intake(firefox, study_server, "en") == "/en/study/arm"
    visit(firefox, f"{study_server.url}/en/account")
    press(firefox, firefox.find_element(By.ID, "study-withdraw"))
    if level == "erase":
        press(firefox, firefox.find_element(By.ID, "erase"))
        assert path_of(firefox) == "/en/study/withdraw/erase"  # a confirmation first
        press(firefox, firefox.find_element(By.ID, "erase-confirm"))
    else:
        press(firefox, firefox.find_element(By.ID, level))
    assert path_of(firefox) == "/en/account"
    db = connect(study_server.data_dir / "stillroom.db")
    try:
        entry = study_log.entries(db, "withdrawal")[-1]
    finally:
        db.close()
    assert entry.detail["level"] == level
    linked = query(
        study_server,
        "SELECT sessions_stopped, questionnaires_stopped, erased, slot FROM study_participants"
        " WHERE pseudonym = ?",
        (entry.pseudonym,),
    )
    if level == intake.ERASE:  # the account got a fresh pseudonym: the log no longer leads to it
        assert linked == []
        (sessions, forms, erased, slot) = query(
            study_server,
            "SELECT sessions_stopped, questionnaires_stopped, erased, slot FROM study_participants"
            " ORDER BY erased DESC LIMIT 1",
        )[0]
    else:
        (sessions, forms, erased, slot) = linked[0]
    assert bool(sessions) is (level != intake.STOP_QUESTIONNAIRES)
    assert bool(forms) is (level != intake.STOP_SESSIONS)
    assert bool(erased) is (slot is None) is (level == intake.ERASE)
    answers = query(
        study_server, "SELECT count(*) FROM study_answers WHERE pseudonym = ?", (entry.pseudonym,)
    )[0][0]
    assert answers == (0 if level == intake.ERASE else 2)
    [(arm,)] = query(
        study_server, "SELECT arm FROM allocations WHERE pseudonym = ?", (entry.pseudonym,)
    )
    booking_link = firefox.find_elements(By.CSS_SELECTOR, "a[href='/en/book']")
    # Sessions go on only when questionnaires alone stopped, and a waitlist still waits.
    assert bool(booking_link) is (level == intake.STOP_QUESTIONNAIRES and arm == "chat")


def test_a_major_consent_version_is_asked_for_again_at_the_next_login(firefox, tmp_path):
    folder = tmp_path / "study"  # a server of its own: the shared one's folder never changes
    shutil.copytree(EXAMPLE, folder)
    data_dir = tmp_path / "instance"
    prepare_instance(Settings.load({}, data_dir=data_dir, disk_reserve_mib=1))
    keys = ("--study-key", str(key_file(tmp_path / "s.pub")))
    keys += ("--statistician-key", str(key_file(tmp_path / "t.pub")))
    started = stillroom(data_dir, "study", "start", *keys, study=folder)
    assert started.returncode == 0, started.stderr
    server = start_server(data_dir, {"STILLROOM_STUDY": str(folder)})
    try:
        passphrase = new_participant(firefox, server, "en")
        assert answer_intake(firefox, "en") == "/en/study/arm"
        log_out(firefox)
    finally:
        stop_server(server)

    add_consent_version(folder, "2.0", "major")
    amended = stillroom(data_dir, "study", "amend", study=folder)
    assert amended.returncode == 0, amended.stderr
    server = start_server(data_dir, {"STILLROOM_STUDY": str(folder)})
    try:
        log_in(firefox, f"{server.url}/en", passphrase)
        assert path_of(firefox) == "/en/study/consent"
        assert "Version 2.0." in str(firefox.find_element(By.TAG_NAME, "main").text)
        press(firefox, firefox.find_element(By.CSS_SELECTOR, "header a.help"))
        assert path_of(firefox) == "/en/help"  # help is never held back by the question
        visit(firefox, f"{server.url}/en/account")
        assert path_of(firefox) == "/en/study/consent"
        firefox.find_element(By.ID, "consent-participate").click()
        firefox.find_element(By.ID, "consent-questionnaires").click()
        press(firefox, firefox.find_element(By.ID, "consent-give"))
        assert len(str(firefox.find_element(By.ID, "receipt").text)) == 9
        visit(firefox, f"{server.url}/en/account")
        assert path_of(firefox) == "/en/account"
        log_out(firefox)
        shown = hashlib.sha256((folder / "consent" / "2.0" / "en.toml").read_bytes()).hexdigest()
        assert ("2.0", shown) in query(server, "SELECT version, text_sha256 FROM study_consents")
        db = connect(data_dir / "stillroom.db")
        try:
            consent = study_log.entries(db, "consent")[-1]
            changes = study_log.entries(db, "consent-version")
        finally:
            db.close()
    finally:
        stop_server(server)
    assert (consent.detail["version"], consent.detail["text"]) == ("2.0", shown)
    # The amendment logs the new version without a pseudonym; the participant's change has one.
    assert [entry.detail for entry in changes if entry.pseudonym] == [
        {"from": "1.1", "to": "2.0", "kind": "major"}
    ]


def test_a_due_questionnaire_is_answered_in_two_sittings(firefox, moved: MovedServer):
    server = moved.server
    passphrase = new_participant(firefox, server, "en")
    assert answer_intake(firefox, "en") == "/en/study/arm"
    randomised = moved.today()
    visit(firefox, f"{server.url}/en/account")
    assert not firefox.find_elements(By.ID, "assessment-due")  # nothing is due yet
    log_out(firefox)

    moved.move_to(13 * DAY)  # week 2: its window runs from day 12 to day 21
    log_in(firefox, f"{server.url}/en", passphrase)
    visit(firefox, f"{server.url}/en/account")
    due = str(firefox.find_element(By.ID, "assessment-due").text)
    last_day = format_date(randomised + timedelta(days=21), "full", locale=DATE_LOCALES["en"])
    assert last_day in due and "about 5 minutes" in due
    press(firefox, firefox.find_element(By.ID, "assessment-start"))
    assert path_of(firefox) == "/en/study/questions"
    wellbeing = STUDY.instruments["wellbeing"]
    first, second = pages(wellbeing)
    assert len(firefox.find_elements(By.CSS_SELECTOR, "main fieldset")) == len(first)
    choose(firefox, {item.id: "often" for item in first})
    press(firefox, firefox.find_element(By.ID, "form-next"))
    assert "Page 2 of 2" in str(firefox.find_element(By.ID, "form-page").text)
    log_out(firefox)

    log_in(firefox, f"{server.url}/en", passphrase)  # a second sitting
    visit(firefox, f"{server.url}/en/account")
    link = firefox.find_element(By.ID, "assessment-start")
    assert "Continue" in str(link.text)
    press(firefox, link)
    assert "Page 2 of 2" in str(firefox.find_element(By.ID, "form-page").text)  # page 1 kept
    shown = [
        str(el.get_attribute("name"))
        for el in firefox.find_elements(By.CSS_SELECTOR, "main input[type=radio]")
    ]
    assert set(shown) == {item.id for item in second}
    choose(firefox, {item.id: "rarely" for item in second})
    press(firefox, firefox.find_element(By.ID, "form-next"))
    assert firefox.find_element(By.ID, "assessment-thanks")
    press(firefox, firefox.find_element(By.ID, "back-to-account"))
    assert path_of(firefox) == "/en/account"
    assert not firefox.find_elements(By.ID, "assessment-due")
    completed = moved.db_rows(
        "SELECT json_extract(detail, '$.timepoint'), day FROM study_log"
        " WHERE event = 'assessment-completed' ORDER BY seq"
    )
    assert completed == [
        ("baseline", randomised.isoformat()),
        ("week-2", moved.today().isoformat()),
    ]
    assert moved.db_rows("SELECT draft FROM study_participants") == [(None,)]
