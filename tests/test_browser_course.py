"""The course in a real Firefox ESR with JavaScript off, through a real server whose clock moves.

The server runs the example study. Its clock is moved the way an operator's machine
would see time pass: libfaketime (Debian's ``faketime`` package) sits under the real
``stillroom serve`` process and reads its offset from a file the test rewrites, so no
code of Stillroom knows about it. Intake is another part's work: the tests put each
participant into the study as it would (a pseudonym and an allocation row).
"""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pyotp
import pytest
from marionette_driver.by import By
from marionette_driver.marionette import Marionette, WebElement
from test_browser_nojs import (
    PREFS,
    THERAPIST_PASSPHRASES,
    choose_time_of,
    create_account,
    enrol_therapist,
    frame_text,
    has,
    is_gone,
    log_in,
    log_out,
    main_button,
    page_ready,
    press,
    query_of,
    running_firefox,
    set_date_and_time,
    type_into,
    visit,
    wait,
)

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study

from support import FAST_ARGON2, LiveServer, start_server, stop_server

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HOUR = 3600
DAY = 24 * HOUR
POSITIONS = itertools.count(500)


class MovedServer:
    """A live server over a started study, and the offset of its clock from ours."""

    def __init__(self, server: LiveServer, offset_file: Path) -> None:
        self.server = server
        self.offset_file = offset_file
        self.offset = 0

    def move_to(self, offset: int) -> None:
        """Let the server's clock run ``offset`` seconds ahead of the real one from now on."""
        self.offset = offset
        self.offset_file.write_text(f"+{offset}\n")

    def now(self) -> float:
        """Return the server's time."""
        return time.time() + self.offset

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.now(), datetime.UTC).date()

    def db_rows(self, sql: str, args: list[object] | None = None) -> list[tuple]:
        db = connect(self.server.data_dir / "stillroom.db")
        try:
            return db.execute(sql, args or []).fetchall()
        finally:
            db.close()

    def enter_study(self, arm: str) -> str:
        """Put the newest account into the study in ``arm``, allocated today (server time)."""
        db = connect(self.server.data_dir / "stillroom.db")
        try:
            [[participant]] = db.execute(
                "SELECT id FROM participants ORDER BY rowid DESC LIMIT 1"
            ).fetchall()
            pseudonym = f"B{participant[:10]}"
            with transaction(db):
                db.execute(
                    # The pages began the intake already: finish it as the intake would.
                    "INSERT INTO study_participants (participant_id, pseudonym, stratum, step)"
                    " VALUES (?, ?, 'en-berlin', 'done') ON CONFLICT (participant_id)"
                    " DO UPDATE SET pseudonym = excluded.pseudonym, step = 'done'",
                    [participant, pseudonym],
                )
                db.execute(
                    "INSERT INTO allocations (pseudonym, stratum, position, arm, day)"
                    " VALUES (?, 'en-berlin', ?, ?, ?)",
                    [pseudonym, next(POSITIONS), arm, self.today().isoformat()],
                )
        finally:
            db.close()
        return pseudonym

    def crossovers(self) -> list[study_log.Entry]:
        db = connect(self.server.data_dir / "stillroom.db")
        try:
            return study_log.entries(db, "crossover")
        finally:
            db.close()


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    """One headless Firefox ESR with Tor-Browser-like prefs (script off) for this module."""
    with running_firefox(PREFS, "gecko-course.log") as browser:
        yield browser


@pytest.fixture
def moved(tmp_path: Path) -> Iterator[MovedServer]:
    """A real ``stillroom serve --no-tor`` running the example study, under libfaketime."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: install the faketime package")
    data_dir = tmp_path / "instance"
    settings = Settings.load({}, data_dir=data_dir, disk_reserve_mib=1, **FAST_ARGON2)
    prepare_instance(settings)
    study = load_study(EXAMPLE)
    db = connect(settings.database_path)
    try:
        amendment.start(
            db,
            data_dir,
            study,
            datetime.datetime.now(datetime.UTC).date(),
            (new_recipient_keypair()[0], new_recipient_keypair()[0]),
            10,
        )
    finally:
        db.close()
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text("+0\n")
    server = start_server(
        data_dir,
        {
            "STILLROOM_STUDY": str(EXAMPLE),
            "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            "FAKETIME_NO_CACHE": "1",
            # Only the wall clock moves: the server's timers keep real time.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
    )
    yield MovedServer(server, offset_file)
    stop_server(server)


def berlin(moment: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(moment, ZoneInfo("Europe/Berlin"))


def therapist_at_berlin(moved: MovedServer, browser: Marionette, name: str) -> tuple[str, str]:
    """Enrol a therapist of the Berlin site; return their login name and TOTP secret."""
    login_name, secret = enrol_therapist(browser, moved.server, name)
    db = connect(moved.server.data_dir / "stillroom.db")
    try:
        with transaction(db):
            db.execute("UPDATE therapists SET site = 'berlin' WHERE name = ?", [name])
    finally:
        db.close()
    return login_name, secret


def therapist_logs_in(moved: MovedServer, browser: Marionette, login: tuple[str, str]) -> None:
    """Log the therapist in again, with a code of the server's (moved) time."""
    portal = f"{moved.server.portal_url}/en"
    visit(browser, f"{portal}/")
    if has(browser, "footer form"):
        log_out(browser)
    visit(browser, f"{portal}/login")
    type_into(browser, "name", login[0])
    type_into(browser, "passphrase", THERAPIST_PASSPHRASES[login[0]])
    type_into(browser, "code", pyotp.TOTP(login[1]).at(moved.now() + 30))
    press(browser, main_button(browser))


def participant_logs_in(moved: MovedServer, browser: Marionette, passphrase: str) -> None:
    base = f"{moved.server.url}/en"
    visit(browser, f"{base}/")
    if has(browser, "footer form"):
        log_out(browser)
    log_in(browser, base, passphrase)


def publish(moved: MovedServer, browser: Marionette, start: datetime.datetime, weeks: int) -> None:
    visit(browser, f"{moved.server.portal_url}/en/availability")
    set_date_and_time(browser, start.date(), start.strftime("%H:%M"))
    type_into(browser, "weeks", str(weeks))
    press(browser, main_button(browser))
    assert query_of(browser) == "done=published"


def send_on_chat_page(browser: Marionette, button: WebElement) -> None:
    """Send a form of the chat page and wait for the answer.

    The chat page carries the live script (which never runs here), so it is not
    checked for scripts as other pages are.
    """
    old_page = browser.find_element(By.TAG_NAME, "html")
    button.click()
    wait(browser, lambda b: is_gone(old_page) and page_ready(b))


def main_text(browser: Marionette) -> str:
    return str(browser.find_element(By.TAG_NAME, "main").text)


def test_a_waitlist_ends_on_its_day_and_the_participant_crosses_over_to_booking(
    firefox: Marionette, moved: MovedServer
) -> None:
    base = f"{moved.server.url}/en"
    visit(firefox, f"{base}/")
    firefox.delete_all_cookies()
    name = f"Wait{time.monotonic_ns() % 100000}"
    therapist_at_berlin(moved, firefox, name)
    in_two_days = berlin(moved.now() + 2 * DAY).replace(hour=10, minute=0)
    publish(moved, firefox, in_two_days, weeks=6)
    log_out(firefox)

    passphrase = create_account(firefox, base)
    pseudonym = moved.enter_study("waitlist")
    ends = moved.today() + datetime.timedelta(weeks=4)
    visit(firefox, f"{base}/account")
    shown_end = f"{ends:%A}, {ends.day} {ends:%B %Y}"
    assert f"Your waiting time ends on {shown_end}" in main_text(firefox)
    assert not firefox.find_elements(By.PARTIAL_LINK_TEXT, "Book a time")
    visit(firefox, f"{base}/book")
    assert "Your waiting time ends on" in main_text(firefox)
    assert name not in main_text(firefox), "no times are offered before the waitlist ends"
    assert moved.crossovers() == []

    moved.move_to(28 * DAY)  # four weeks later, on the waitlist's last day
    participant_logs_in(moved, firefox, passphrase)
    visit(firefox, f"{base}/account")
    assert "Session 1 of 6" in main_text(firefox)
    assert "waiting time" not in main_text(firefox)
    [crossover] = moved.crossovers()
    assert (crossover.pseudonym, crossover.day) == (pseudonym, ends.isoformat())

    firefox.find_element(By.PARTIAL_LINK_TEXT, "Book a time").click()
    wait(firefox, lambda b: name in main_text(b))
    choose_time_of(firefox, name)
    assert query_of(firefox) == "done=booked"
    visit(firefox, f"{base}/account")
    assert len(moved.crossovers()) == 1, "the crossover is logged once"


def chat_both_sides(
    moved: MovedServer, browser: Marionette, login: tuple[str, str], passphrase: str, text: str
) -> None:
    """Both sides write in the open chat of the participant's next appointment."""
    participant_logs_in(moved, browser, passphrase)
    browser.find_element(By.PARTIAL_LINK_TEXT, "Open the chat").click()
    wait(browser, lambda b: "The chat is open" in frame_text(b, "feed"))
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.compose"))
    browser.find_element(By.ID, "text").send_keys(text)
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    browser.switch_to_frame()
    therapist_logs_in(moved, browser, login)
    visit(browser, f"{moved.server.portal_url}/en/")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Chat").click()
    wait(browser, lambda b: text in frame_text(b, "feed"))
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.compose"))
    browser.find_element(By.ID, "text").send_keys("Thank you for coming.")
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    browser.switch_to_frame()


def test_a_course_of_three_sessions_with_one_therapist_and_proposed_next_times(
    firefox: Marionette, moved: MovedServer
) -> None:
    base = f"{moved.server.url}/en"
    visit(firefox, f"{base}/")
    firefox.delete_all_cookies()
    name = f"Course{time.monotonic_ns() % 100000}"
    login = therapist_at_berlin(moved, firefox, name)
    other = f"Other{time.monotonic_ns() % 100000}"
    soon = berlin(moved.now() + 70 * 60)
    soon = soon.replace(minute=soon.minute - soon.minute % 5, second=0, microsecond=0)
    publish(moved, firefox, soon, weeks=1)
    log_out(firefox)
    therapist_at_berlin(moved, firefox, other)  # a colleague with times the course never offers
    publish(moved, firefox, soon + datetime.timedelta(days=3), weeks=3)
    log_out(firefox)

    passphrase = create_account(firefox, base)
    moved.enter_study("chat")
    visit(firefox, f"{base}/book")
    choose_time_of(firefox, name)
    chat_both_sides(moved, firefox, login, passphrase, "Hello, this is my first session.")

    # From the chat page, the therapist proposes a new time for this participant alone.
    second = (soon + datetime.timedelta(days=2)).replace(hour=18, minute=0)
    set_date = "arguments[0].value = arguments[1];"
    firefox.execute_script(
        set_date,
        script_args=(firefox.find_element(By.ID, "proposed-date"), second.date().isoformat()),
    )
    firefox.execute_script(
        set_date, script_args=(firefox.find_element(By.ID, "proposed-time"), "18:00")
    )
    send_on_chat_page(
        firefox, firefox.find_element(By.CSS_SELECTOR, "#course form:last-of-type button")
    )
    assert "waiting for their confirmation" in main_text(firefox)
    # ... and publishes a free time, for the session after that.
    third = second + datetime.timedelta(days=3)
    publish(moved, firefox, third, weeks=1)
    log_out(firefox)

    for number, (moment, text) in enumerate(
        [(second, "Here for the second one."), (third, "And the third.")], start=2
    ):
        moved.move_to(int(moment.timestamp() - time.time()) - 4 * HOUR)  # the chat before is over
        participant_logs_in(moved, firefox, passphrase)
        visit(firefox, f"{base}/account")
        page = main_text(firefox)
        assert f"Session {number} of 6" in page, page
        assert f"{name} proposes your next session for" in page
        press(firefox, firefox.find_element(By.ID, "confirm-proposal"))
        assert query_of(firefox) == "done=booked"
        assert "Your next session:" in main_text(firefox)
        moved.move_to(int(moment.timestamp() - time.time()) - 30 * 60)  # its chat is open
        chat_both_sides(moved, firefox, login, passphrase, text)
        if number == 2:  # the next time is one of the therapist's published free times
            select = firefox.find_element(By.ID, "proposed-slot")
            assert third.strftime("%H:%M") in str(select.text)
            send_on_chat_page(firefox, firefox.find_element(By.CSS_SELECTOR, "#course form button"))
            assert "waiting for their confirmation" in main_text(firefox)
        log_out(firefox)

    moved.move_to(int(third.timestamp() - time.time()) + 2 * HOUR)
    participant_logs_in(moved, firefox, passphrase)
    visit(firefox, f"{base}/account")
    page = main_text(firefox)
    assert "Session 4 of 6" in page
    assert page.count(f"Chat with {name}") == 3
    assert other not in page
    attended = moved.db_rows("SELECT count(*) FROM study_log WHERE event = 'session-attended'")
    assert attended == [(3,)]
