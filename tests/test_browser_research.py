"""The researcher's pages in a real Firefox ESR with JavaScript off, through a real server
running the example study: enrolment, login, the CONSORT flow and its diagram, the safety
list and the completion per timepoint."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pyotp
import pytest
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_nojs import (
    PREFS,
    assert_no_scripts,
    main_button,
    path_of,
    press,
    running_firefox,
    shot,
    type_into,
    visit,
)
from test_study_consort import ELIGIBLE, EXAMPLE, NOT_ELIGIBLE, STUDY, Plan, follow

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment
from stillroom.webapp.study import log as study_log

from support import (
    FAST_ARGON2,
    NO_INTAKE_LIMITS,
    LiveServer,
    add_researcher_by_cli,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.browser
START = datetime.date(2027, 3, 1)


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    """Firefox ESR with script off; SVG on, as in the ordinary browser the study team uses."""
    with running_firefox({**PREFS, "svg.disabled": False}, "gecko-research.log") as browser:
        yield browser


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[LiveServer, str]]:
    """A real server over a started example study with eight participants and a safety hit."""
    data_dir = tmp_path_factory.mktemp("research") / "instance"
    settings = Settings.load(
        {},
        data_dir=data_dir,
        disk_reserve_mib=1,
        study=str(EXAMPLE),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )
    prepare_instance(settings)
    db = connect(settings.database_path)
    try:
        keys = (new_recipient_keypair()[0], new_recipient_keypair()[0])
        amendment.start(db, data_dir, STUDY, START, keys, 40)
        app = create_participant_app(settings)
        flow = [Plan("en", ELIGIBLE, True, 1, ("baseline",)) for _ in range(6)]
        flow += [Plan("en", NOT_ELIGIBLE), Plan("en", ELIGIBLE, True, 0, ("baseline",))]
        for plan in flow:
            follow(db, app, plan, START)
        pseudonym = str(study_log.entries(db, "allocation")[0].pseudonym)
        with transaction(db):
            detail = {"rule": "self-harm-often", "timepoint": "baseline"}
            study_log.append(db, "safety-rule", START, pseudonym, detail)
    finally:
        db.close()
    live = start_server(data_dir, {"STILLROOM_STUDY": str(EXAMPLE)})
    yield live, pseudonym
    stop_server(live)


def test_a_researcher_reads_the_flow_the_diagram_the_safety_list_and_completion(
    firefox: Marionette, server: tuple[LiveServer, str]
) -> None:
    live, pseudonym = server
    login_name, token = add_researcher_by_cli(live.data_dir, "Rosa")
    portal = f"{live.portal_url}/en"
    visit(firefox, f"{portal}/enrol/{token}")
    secret = str(firefox.find_element(By.ID, "totp-secret").text).replace(" ", "")
    passphrase = str(firefox.find_element(By.ID, "passphrase").text)
    type_into(firefox, "confirm", passphrase)
    type_into(firefox, "code", pyotp.TOTP(secret).now())
    press(firefox, main_button(firefox))
    assert path_of(firefox) == "/en/research", firefox.page_source

    press(firefox, firefox.find_element(By.CSS_SELECTOR, "footer form button"))  # log out
    visit(firefox, f"{portal}/login")
    type_into(firefox, "name", login_name)
    type_into(firefox, "passphrase", passphrase)
    type_into(firefox, "code", pyotp.TOTP(secret).at(time.time() + 30))
    press(firefox, main_button(firefox))
    assert path_of(firefox) == "/en/research", firefox.page_source
    assert_no_scripts(firefox)

    table = str(firefox.find_element(By.ID, "consort-enrolment").text)
    assert "Assessed for eligibility 8" in table and "Randomised 7" in table
    assert "Not eligible <5" in table
    # The diagram is drawn at its own size: the SVG loaded and rendered, not its alt text.
    shown = firefox.find_element(By.ID, "consort-diagram").rect["width"]
    assert shown == drawn_width(firefox, f"{portal}/research/consort.svg")
    visit(firefox, f"{portal}/research")
    shot(firefox, "research-flow")

    firefox.find_element(By.LINK_TEXT, "Safety list").click()
    assert path_of(firefox) == "/en/research/safety"
    row = str(firefox.find_element(By.CSS_SELECTOR, "#safety-list tbody tr").text)
    assert row == f"{pseudonym} self-harm-often {START.isoformat()}"
    shot(firefox, "research-safety")

    firefox.find_element(By.LINK_TEXT, "Completion").click()
    assert path_of(firefox) == "/en/research/completion"
    baseline = str(firefox.find_element(By.ID, "completion-baseline").text)
    assert baseline == "baseline 7 0 0 7 100%"
    shot(firefox, "research-completion")

    # A therapist's page is refused to the researcher.
    visit(firefox, f"{portal}/availability")
    assert not firefox.find_elements(By.CSS_SELECTOR, "form input[name=date]")
    assert "refused" in str(firefox.find_element(By.TAG_NAME, "main").text)


def drawn_width(browser: Marionette, url: str) -> float:
    """Open the diagram on its own and return the width it declares."""
    visit(browser, url)
    return float(str(browser.find_element(By.TAG_NAME, "svg").get_attribute("width")))
