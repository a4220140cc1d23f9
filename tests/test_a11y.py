"""Every page of both apps passes axe-core's WCAG 2.0-2.2 A and AA rules in Firefox ESR.

The pages are audited as a participant in Tor Browser at "Safest" sees them: page script
stays off. axe-core (fetched, pinned and checked by ``make axe``) is injected through
Marionette's system sandbox, which runs even though the page's own script cannot and is
not bound by the page's Content Security Policy: the pages keep their CSP, only the test
browser looks past it. A frame is audited in its own document, as axe does with frames
its script cannot reach.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyotp
import pytest
from flask import Flask
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_nojs import (
    PREFS,
    choose_time_of,
    create_account,
    log_out,
    main_button,
    page_ready,
    path_of,
    press,
    running_firefox,
    set_date_and_time,
    type_into,
    visit,
    wait,
)
from test_browser_study import answer_intake, choose, new_participant
from test_browser_study import study_server as study_server  # the example study, running
from test_study_consort import NOT_ELIGIBLE

from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.settings import Settings

from support import FAST_ARGON2, LiveServer, add_therapist_by_cli, stillroom_env

pytestmark = pytest.mark.browser

#: Where ``make axe`` unpacks axe-core: inside the virtual environment, never in git.
AXE = Path(sys.prefix) / "axe-core" / "axe.min.js"
#: WCAG 2.0, 2.1 and 2.2 at levels A and AA.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
AUDITED_LANGUAGES = ("en", "de")
#: How many nodes of each violation the report names.
NODES_SHOWN = 3

#: GET endpoints this audit leaves out on purpose, and why. Endpoints without GET (forms'
#: targets) are left out without being listed.
NOT_PAGES = {
    "stylesheet": "the stylesheet, not a page",
    "live_script": "the live chat's script, not a page",
    "to_default_language": "the portal's root only redirects to a language",
    "participant.study_step": "only redirects to the step of the study the participant is at",
    "participant.chat_live": "the chat's WebSocket",
    "portal.chat_live": "the chat's WebSocket",
    "portal.research_diagram": "an SVG image, audited as part of the research page",
}

#: Runs axe-core in the current document and calls back with its violations, or an error.
RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {
  runOnly: {type: "tag", values: arguments[0]},
  resultTypes: ["violations"],
  iframes: false,
}).then(
  (result) => done({
    version: axe.version,
    violations: result.violations.map((rule) => ({
      id: rule.id,
      impact: rule.impact,
      nodes: rule.nodes.map((node) => node.target.join(" ")),
    })),
  }),
  (error) => done({error: String(error)}),
);
"""


@dataclass
class Audit:
    """What the audit has seen so far: the runs, the endpoints covered, the violations."""

    browser: Marionette
    script: str
    apps: dict[str, Flask]
    runs: int = 0
    version: str = ""
    endpoints: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    #: Said after each page's address in the report, e.g. " in dark mode".
    mode: str = ""

    def page(self, url: str, error_page: bool = False) -> None:
        """Load ``url`` and audit it, with every frame it holds.

        Unless ``error_page``, the page must be the one asked for: not an error page,
        not a redirect to another one (which would leave the page asked for unaudited).
        """
        self.browser.navigate(url)  # not visit(): the chat pages carry the live script
        wait(self.browser, page_ready)
        shown = self.endpoint_shown()
        if not error_page:
            assert shown == self.endpoint_of(url), f"{url} showed {self.browser.get_url()}"
            self.endpoints.add(shown)
        self.run(url)
        for index in range(len(self.browser.find_elements(By.TAG_NAME, "iframe"))):
            frame = self.browser.find_elements(By.TAG_NAME, "iframe")[index]
            source = str(frame.get_attribute("src"))
            self.browser.switch_to_frame(frame)
            try:
                wait(self.browser, page_ready)
                self.run(f"{url} (its frame {source})")
            finally:
                self.browser.switch_to_frame()

    def endpoint_of(self, url: str) -> str:
        """Return the endpoint of the app that serves ``url``."""
        parts = urlsplit(url)
        adapter = self.apps[f"{parts.scheme}://{parts.netloc}"].url_map.bind("127.0.0.1")
        endpoint, _ = adapter.match(parts.path, method="GET")
        return str(endpoint)

    def endpoint_shown(self) -> str:
        """Return the endpoint of the page the browser shows, or "error" for an error page."""
        if re.match(r"\d{3}\b", str(self.browser.execute_script("return document.title;"))):
            return "error"
        return self.endpoint_of(str(self.browser.get_url()))

    def run(self, where: str) -> None:
        """Run axe-core once in the current document and keep what it finds."""
        result = self.browser.execute_async_script(
            self.script + RUN_AXE, script_args=[TAGS], sandbox="system", script_timeout=60_000
        )
        assert "error" not in result, f"{where}: axe failed: {result['error']}"
        self.runs += 1
        self.version = str(result["version"])
        for rule in result["violations"]:
            nodes = ", ".join(rule["nodes"][:NODES_SHOWN])
            more = len(rule["nodes"]) - NODES_SHOWN
            self.violations.append(
                f"{where}{self.mode}: {rule['id']} ({rule['impact']}) at {nodes}"
                + (f" and {more} more" if more > 0 else "")
            )


def url_maps(server: LiveServer, data_dir: Path) -> dict[str, Flask]:
    """Return the two apps, by the address the live server serves each at (for their URL maps)."""
    settings = Settings.load({}, data_dir=data_dir, disk_reserve_mib=1, **FAST_ARGON2)
    return {
        server.url: create_participant_app(settings),
        server.portal_url: create_portal_app(settings),
    }


def pages_of(app: Flask) -> set[str]:
    """Return the app's GET endpoints that take no parameter but the language."""
    return {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and not (rule.arguments - {"lang"})
    }


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    """One headless Firefox ESR at Tor Browser's "Safest" level for the whole audit."""
    with running_firefox(PREFS, "gecko-a11y.log") as browser:
        yield browser


def axe_source() -> str:
    """Return axe-core's script; fail (never skip) when ``make axe`` has not fetched it."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make axe` (part of `make test`) to fetch axe-core")
    return AXE.read_text()


def enrol(browser: Marionette, url: str) -> None:
    """Take the passphrase an enrolment page shows and confirm it with a TOTP code."""
    visit(browser, url)
    secret = str(browser.find_element(By.ID, "totp-secret").text).replace(" ", "")
    type_into(browser, "confirm", str(browser.find_element(By.ID, "passphrase").text))
    type_into(browser, "code", pyotp.TOTP(secret).now())
    press(browser, main_button(browser))


def enrol_and_publish(audit: Audit, server: LiveServer, name: str, lead: bool) -> None:
    """Add a therapist, audit the enrolment page, enrol with TOTP and publish a time soon.

    A lead of a site also has the site's safety list. The time is just over an hour ahead
    (the earliest participants can book); the live server opens chats two hours early, so
    its chat is open at once.
    """
    browser = audit.browser
    _, token = add_therapist_by_cli(server.data_dir, name)
    if lead:
        for command in (["site", name, "audited"], ["lead", name]):
            subprocess.run(
                [str(Path(sys.executable).with_name("stillroom")), "therapist", *command],
                capture_output=True,
                timeout=60,
                env=stillroom_env(server.data_dir, 0),
                check=True,
            )
    for lang in AUDITED_LANGUAGES:
        audit.page(f"{server.portal_url}/{lang}/enrol/{token}")
    enrol(browser, f"{server.portal_url}/en/enrol/{token}")
    assert path_of(browser) == "/en/", browser.page_source
    soon = datetime.datetime.now(ZoneInfo("Europe/Berlin")) + datetime.timedelta(minutes=70)
    soon = soon.replace(minute=soon.minute - soon.minute % 5)
    visit(browser, f"{server.portal_url}/en/availability")
    set_date_and_time(browser, soon.date(), soon.strftime("%H:%M"))
    type_into(browser, "weeks", "2")  # a second time stays free to show on the booking page
    press(browser, main_button(browser))


def audit_open_mode(audit: Audit, server: LiveServer) -> None:
    """Audit the pages of a deployment without a study: accounts, booking, both sides of a chat."""
    browser = audit.browser
    participant, portal = server.url, server.portal_url
    visit(browser, f"{participant}/en/")
    browser.delete_all_cookies()  # no session left over from another test

    # The participant's pages before an account exists.
    audit.page(f"{participant}/")
    for lang in AUDITED_LANGUAGES:
        for path in ["/", "/help", "/privacy", "/create", "/login"]:
            audit.page(f"{participant}/{lang}{path}")
        audit.page(f"{participant}/{lang}/no-such-page", error_page=True)
        visit(browser, f"{participant}/{lang}/privacy")
        table = browser.find_element(By.CSS_SELECTOR, "main a[href*='/privacy/']")
        audit.page(str(table.get_property("href")))
        for path in ["/login", "/privacy"]:
            audit.page(f"{portal}/{lang}{path}")
        audit.page(f"{portal}/{lang}/no-such-page", error_page=True)

    # The therapist, a site's lead, enrols (a TOTP code), stays logged in and publishes times.
    name = f"Audited{time.monotonic_ns() % 100000}"
    enrol_and_publish(audit, server, name, lead=True)

    # The participant makes an account, books one of the times and opens the chat.
    create_account(browser, f"{participant}/en")
    for lang in AUDITED_LANGUAGES:
        audit.page(f"{participant}/{lang}/book")
    visit(browser, f"{participant}/en/book")
    choose_time_of(browser, name)
    chat_link = browser.find_element(By.PARTIAL_LINK_TEXT, "Open the chat")
    appointment = urlsplit(str(chat_link.get_property("href"))).path.rsplit("/", 1)[1]
    # A first message starts the conversation, which the page that deletes it needs.
    visit(browser, f"{participant}/en/chat/{appointment}/compose")
    type_into(browser, "text", "Hello.")
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    for lang in AUDITED_LANGUAGES:
        base = f"{participant}/{lang}"
        for path in ["/account", "/account/passphrase", "/account/delete"]:
            audit.page(base + path)
        audit.page(f"{base}/appointments/{appointment}/cancel")
        chat = f"{base}/chat/{appointment}"
        for path in ["", "/feed", "/compose", "/history", "/delete"]:
            audit.page(chat + path)

    # The therapist's side of the same appointment.
    visit(browser, f"{portal}/en/")
    pseudonym = str(browser.find_element(By.CSS_SELECTOR, "strong.pseudonym").text)
    for lang in AUDITED_LANGUAGES:
        base = f"{portal}/{lang}"
        for path in ["/", "/availability", "/passphrase", "/safety", f"/notes/{pseudonym}"]:
            audit.page(base + path)
        audit.page(f"{base}/appointments/{appointment}/cancel")
        chat = f"{base}/chat/{appointment}"
        for path in ["", "/feed", "/compose", "/history", "/handover", "/block", "/close"]:
            audit.page(chat + path)
    log_out(browser)


def audit_study(audit: Audit, server: LiveServer) -> None:
    """Audit the pages the example study adds: intake, its outcomes, withdrawal, research."""
    browser = audit.browser
    participant = server.url
    new_participant(browser, server, "en")  # lands on the study's information page
    for lang in AUDITED_LANGUAGES:
        audit.page(f"{participant}/{lang}/study/information")
    visit(browser, f"{participant}/en/study/information")
    assert answer_intake(browser, "en") == "/en/study/arm"
    for lang in AUDITED_LANGUAGES:
        for path in ["/study/arm", "/study/withdraw", "/study/withdraw/erase"]:
            audit.page(f"{participant}/{lang}{path}")

    # A second participant is not eligible; consent and questions are audited on the way.
    new_participant(browser, server, "en")
    press(browser, browser.find_element(By.ID, "study-next"))  # each step opens the next
    for lang in AUDITED_LANGUAGES:
        for path in ["/study/consent", "/study/consent/current"]:
            audit.page(f"{participant}/{lang}{path}")
    visit(browser, f"{participant}/en/study/consent")
    browser.find_element(By.ID, "consent-participate").click()
    browser.find_element(By.ID, "consent-questionnaires").click()
    press(browser, browser.find_element(By.ID, "consent-give"))
    press(browser, browser.find_element(By.ID, "study-next"))
    for lang in AUDITED_LANGUAGES:
        audit.page(f"{participant}/{lang}/study/questions")
    visit(browser, f"{participant}/en/study/questions")
    choose(browser, NOT_ELIGIBLE)
    press(browser, browser.find_element(By.ID, "form-next"))
    assert path_of(browser) == "/en/study/not-eligible"
    for lang in AUDITED_LANGUAGES:
        audit.page(f"{participant}/{lang}/study/not-eligible")
    log_out(browser)

    # The researcher enrols with a TOTP code and lands on the study's flow.
    added = subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), "researcher", "add", "--name", "Rosa"],
        capture_output=True,
        text=True,
        timeout=120,
        env=stillroom_env(server.data_dir, 0),
        check=True,
    )
    token = added.stdout.strip().rsplit("/", 1)[1]
    enrol(browser, f"{server.portal_url}/en/enrol/{token}")
    assert path_of(browser) == "/en/research", browser.page_source
    for lang in AUDITED_LANGUAGES:
        for path in ["/research", "/research/safety", "/research/completion"]:
            audit.page(f"{server.portal_url}/{lang}{path}")
    log_out(browser)


#: Tor Browser's fingerprinting defence always reports a light scheme, so it is set aside.
DARK = {"privacy.resistFingerprinting": False, "ui.systemUsesDarkTheme": 1}


def audit_dark(audit: Audit, server: LiveServer) -> None:
    """Audit a few pages again as a system in dark mode shows them (contrast above all)."""
    audit.mode = " in dark mode"
    with audit.browser.using_prefs(DARK):
        for lang in AUDITED_LANGUAGES:
            for url in [f"{server.url}/{lang}/", f"{server.url}/{lang}/help"]:
                audit.page(url)
                dark = "return matchMedia('(prefers-color-scheme: dark)').matches;"
                assert audit.browser.execute_script(dark, sandbox="system"), url
            audit.page(f"{server.portal_url}/{lang}/login")


def test_every_page_passes_wcag_a_and_aa_in_two_languages(
    firefox: Marionette, live_server: LiveServer, study_server: LiveServer, tmp_path: Path
) -> None:
    """axe-core finds no WCAG A/AA violation on any page or frame, in English and German."""
    apps = {
        **url_maps(live_server, tmp_path / "open"),
        **url_maps(study_server, tmp_path / "study"),
    }
    audit = Audit(firefox, axe_source(), apps)
    audit_open_mode(audit, live_server)
    audit_study(audit, study_server)
    audit_dark(audit, live_server)

    print(f"axe-core {audit.version}: axe runs: {audit.runs}")
    pages = set().union(*(pages_of(app) for app in apps.values()))
    forgotten = pages - audit.endpoints - NOT_PAGES.keys()
    assert not forgotten, f"pages nobody audits (audit them, or say in NOT_PAGES why): {forgotten}"
    assert audit.runs >= len(audit.endpoints) * len(AUDITED_LANGUAGES)
    assert not audit.violations, "\n".join(["WCAG A/AA violations:", *audit.violations])
