"""Every page of both apps passes axe-core's WCAG 2.0-2.2 A and AA rules in Firefox ESR.

The pages are audited as a participant in Tor Browser at "Safest" sees them: page script
stays off. axe-core (fetched, pinned and checked by ``make axe``) is injected through
Marionette's system sandbox, which runs even though the page's own script cannot and is
not bound by the page's Content Security Policy: the pages keep their CSP, only the test
browser looks past it. A frame is audited in its own document, as axe does with frames
its script cannot reach.

The chat pages whose feed reloads itself (each app's chat page and its feed) are audited
on a server that holds the feed's reloads until news, as ``stillroom serve`` does by
default: there the refresh has a delay of 0, a redirect rather than a time limit, which
axe's ``meta-refresh`` rule (WCAG 2.2.1) accepts. The session's shared server holds
nothing, so its feed reloads on a timer of 5 to 30 seconds, the fallback for operators
who turn holding off. There the "Pause updates" link is what meets 2.2.1 (the user can
turn the time limit off), which axe cannot see, so those two pages are not audited on
that server; every other page is. The participant's chat page is audited once more with
JavaScript on, once its live socket shows the feed without a refresh (``?live=1``).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyotp
import pytest
from flask import Flask
from loadclients import Chat
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_nojs import (
    PREFS,
    choose_time_of,
    create_account,
    is_gone,
    log_in,
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
from test_held_feed import book_and_serve
from test_study_consort import NOT_ELIGIBLE

from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.settings import Settings

from support import (
    FAST_ARGON2,
    LiveServer,
    add_researcher_by_cli,
    add_therapist_by_cli,
    stillroom_env,
    stop_server,
)

pytestmark = pytest.mark.browser

#: Where ``make axe`` unpacks axe-core: inside the virtual environment, never in git.
AXE = Path(sys.prefix) / "axe-core" / "axe.min.js"
#: WCAG 2.0, 2.1 and 2.2 at levels A and AA.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
AUDITED_LANGUAGES = ("en", "de")
#: The example snippet library, for the frame of therapist support.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "snippets"
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

    def page(
        self,
        url: str,
        error_page: bool = False,
        ready: Callable[[Marionette], object] | None = None,
    ) -> None:
        """Load ``url`` and audit it, with every frame it holds.

        The page is audited once its load event has fired or, when ``ready`` is given,
        once ``ready`` says so: the page is then opened as a link opens it, without
        waiting for the load event (see :data:`FRAMES_SHOWN`). Unless ``error_page``,
        the page must be the one asked for: not an error page, not a redirect to another
        one (which would leave the page asked for unaudited).
        """
        if ready is None:
            self.browser.navigate(url)  # not visit(): the chat pages carry the live script
            wait(self.browser, page_ready)
        else:
            before = self.browser.find_element(By.TAG_NAME, "html")
            self.browser.execute_script("location.assign(arguments[0]);", script_args=[url])
            wait(self.browser, lambda b: is_gone(before) and ready(b))
        shown = self.endpoint_shown()
        if not error_page:
            assert shown == self.endpoint_of(url), f"{url} showed {self.browser.get_url()}"
            self.endpoints.add(shown)
        self.run(url)
        for index in range(len(self.browser.find_elements(By.TAG_NAME, "iframe"))):
            frame = self.browser.find_elements(By.TAG_NAME, "iframe")[index]
            self.browser.switch_to_frame(frame)
            try:
                wait(self.browser, page_ready)
                shown_in_frame = self.browser.execute_script(
                    "return location.pathname + location.search;"
                )
                self.run(f"{url} (its frame {shown_in_frame})")
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
def holding(
    tmp_path_factory: pytest.TempPathFactory, vector_cache: Path
) -> Iterator[tuple[LiveServer, Chat]]:
    """A server that holds the feed's reloads until news, as ``stillroom serve`` does by
    default, and one chat open on it (nobody logged in yet)."""
    data_dir = tmp_path_factory.mktemp("a11y-held") / "instance"
    # No STILLROOM_FEED_HOLD_SECONDS; therapist support on, so that its frame is audited too.
    support = {"STILLROOM_ASSIST": "related,risk", "STILLROOM_ASSIST_SNIPPETS": str(EXAMPLES)}
    server, [chat] = book_and_serve(data_dir, support, 1, vector_cache)
    yield server, chat
    stop_server(server)


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
        for path in ["/compose", "/history", "/delete"]:  # the page and its feed: audit_held
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
        for path in ["/compose", "/history", "/handover", "/block", "/close"]:
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
    _, token = add_researcher_by_cli(server.data_dir, "Rosa")
    enrol(browser, f"{server.portal_url}/en/enrol/{token}")
    assert path_of(browser) == "/en/research", browser.page_source
    for lang in AUDITED_LANGUAGES:
        for path in ["/research", "/research/safety", "/research/completion"]:
            audit.page(f"{server.portal_url}/{lang}{path}")
    log_out(browser)


#: Tor Browser's fingerprinting defence always reports a light scheme, so it is set aside.
DARK = {"privacy.resistFingerprinting": False, "ui.systemUsesDarkTheme": 1}
DARK_SEEN = "return matchMedia('(prefers-color-scheme: dark)').matches;"
#: Whether the page and its stylesheet are there, and each frame has loaded its document.
#: On a server that holds the feed's reloads, the chat page's load event may wait for the
#: feed's first held reload, up to the hold (55 s): when the frame's first document comes
#: quickly (seen when the page is opened again), Firefox starts its reload (a delay of 0)
#: before the page's load event, which then waits for that reload too. What the page
#: shows is complete by then: the frame keeps its document while the reload is held.
FRAMES_SHOWN = (
    "return document.readyState !== 'loading'"
    " && [...document.querySelectorAll('link[rel=stylesheet]')].every((l) => l.sheet)"
    " && [...document.querySelectorAll('iframe')].every((f) => f.contentDocument"
    "   && f.contentDocument.URL !== 'about:blank'"
    "   && f.contentDocument.readyState === 'complete');"
)
#: Whether the chat page's live socket has connected: its feed frame then shows ``?live=1``.
LIVE_FEED = (
    "const f = document.querySelector('iframe.feed');"
    " return document.readyState === 'complete' && Boolean(f && f.contentDocument)"
    "   && f.contentWindow.location.search === '?live=1'"
    "   && f.contentDocument.readyState === 'complete';"
)


def frames_shown(browser: Marionette) -> bool:
    """Return whether the page shows its frames' documents (:data:`FRAMES_SHOWN`)."""
    return bool(browser.execute_script(FRAMES_SHOWN))


def live_feed_shown(browser: Marionette) -> bool:
    """Return whether the chat page shows its frames and the live socket replaced the feed."""
    return frames_shown(browser) and bool(browser.execute_script(LIVE_FEED))


#: Ends the feed's animations, as if its reloads had stopped long enough for the notice
#: that says so to show; returns whether it shows.
STALLED = (
    "document.getAnimations().forEach((a) => a.finish());"
    " return getComputedStyle(document.querySelector('.stale')).visibility === 'visible';"
)


def audit_stalled_feed(audit: Audit, url: str) -> None:
    """Audit the feed by URL, then again with the notice it shows when its reloads stop."""
    audit.page(url, ready=frames_shown)
    assert audit.browser.execute_script(STALLED), f"{url}: no notice that updates stopped"
    audit.run(f"{url} (its notice that updates stopped shown)")


@contextlib.contextmanager
def dark_mode(audit: Audit) -> Iterator[None]:
    """Audit pages as a system in dark mode shows them (contrast above all)."""
    audit.mode = " in dark mode"
    try:
        with audit.browser.using_prefs(DARK):
            yield
            assert audit.browser.execute_script(DARK_SEEN, sandbox="system"), "not dark"
    finally:
        audit.mode = ""


def log_in_to_portal(browser: Marionette, url: str, chat: Chat) -> None:
    """Log the chat's therapist in through the portal's form, with a fresh TOTP code."""
    visit(browser, f"{url}/en/login")
    type_into(browser, "name", chat.login_name)
    type_into(browser, "passphrase", chat.therapist_passphrase)
    # Enrolment used the step it happened in; a code is good once, and the next step is taken.
    code = pyotp.TOTP(chat.totp_secret).at(max(time.time(), chat.enrolled_at + 30))
    type_into(browser, "code", code)
    press(browser, main_button(browser))
    assert path_of(browser) == "/en/", browser.page_source


def send(browser: Marionette, chat_url: str, text: str) -> None:
    """Send ``text`` through the compose frame's document, opened on its own."""
    visit(browser, f"{chat_url}/compose")
    type_into(browser, "text", text)
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))


def audit_held(audit: Audit, server: LiveServer, chat: Chat) -> None:
    """Audit each app's chat page and its feed where reloads are held until news.

    The feed is also audited paused and live (as the pause link and the live script load
    it, without refresh) and with its notice that updates stopped; the chat pages and
    their feeds once more in dark mode.
    """
    browser = audit.browser
    browser.delete_all_cookies()  # a cookie is its host's, whatever the port
    log_in(browser, f"{server.url}/en", chat.passphrase)
    send(browser, f"{server.url}/en/chat/{chat.appointment}", "Hello.")
    log_in_to_portal(browser, server.portal_url, chat)
    send(browser, f"{server.portal_url}/en/chat/{chat.appointment}", "Good evening.")
    chats = [
        f"{url}/{lang}/chat/{chat.appointment}"
        for url in (server.url, server.portal_url)
        for lang in AUDITED_LANGUAGES
    ]
    for page in chats:
        for path in ["", "/feed?pause=1", "/feed?live=1"]:
            audit.page(page + path, ready=frames_shown)
        audit_stalled_feed(audit, f"{page}/feed")
    for lang in AUDITED_LANGUAGES:  # the therapist's support frame, beside the chat
        audit.page(f"{server.portal_url}/{lang}/chat/{chat.appointment}/assist")
    with dark_mode(audit):
        for page in chats:
            audit.page(page, ready=frames_shown)
            audit_stalled_feed(audit, f"{page}/feed")
    browser.delete_all_cookies()


def audit_live(audit: Audit, server: LiveServer, chat: Chat) -> None:
    """Audit the participant's chat page with JavaScript on, once its live socket is open,
    so that axe sees the feed the script shows (``?live=1``, no refresh)."""
    plain = audit.browser
    with running_firefox({**PREFS, "javascript.enabled": True}, "gecko-a11y-js.log") as browser:
        audit.browser, audit.mode = browser, " with JavaScript on"
        try:
            log_in(browser, f"{server.url}/en", chat.passphrase)
            audit.page(f"{server.url}/en/chat/{chat.appointment}", ready=live_feed_shown)
        finally:
            audit.browser, audit.mode = plain, ""


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Show ``line`` in the test run's output, passed or failed, whatever the capture."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    terminal = request.config.pluginmanager.getplugin("terminalreporter")
    if terminal is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        terminal.write_line(line)


def test_every_page_passes_wcag_a_and_aa_in_two_languages(
    firefox: Marionette,
    live_server: LiveServer,
    study_server: LiveServer,
    holding: tuple[LiveServer, Chat],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """axe-core finds no WCAG A/AA violation on any page or frame, in English and German."""
    held, chat = holding
    apps = {
        **url_maps(live_server, tmp_path / "open"),
        **url_maps(study_server, tmp_path / "study"),
        **url_maps(held, tmp_path / "held"),
    }
    audit = Audit(firefox, axe_source(), apps)
    started = time.monotonic()
    audit_open_mode(audit, live_server)
    audit_held(audit, held, chat)
    audit_live(audit, held, chat)
    audit_study(audit, study_server)
    with dark_mode(audit):
        for lang in AUDITED_LANGUAGES:
            for url in [f"{live_server.url}/{lang}/", f"{live_server.url}/{lang}/help"]:
                audit.page(url)
            audit.page(f"{live_server.portal_url}/{lang}/login")

    report(
        request,
        f"axe-core {audit.version}: {audit.runs} axe runs over {len(audit.endpoints)} pages"
        f" in {len(AUDITED_LANGUAGES)} languages, in {time.monotonic() - started:.0f} s",
    )
    pages = set().union(*(pages_of(app) for app in apps.values()))
    forgotten = pages - audit.endpoints - NOT_PAGES.keys()
    assert not forgotten, f"pages nobody audits (audit them, or say in NOT_PAGES why): {forgotten}"
    assert audit.runs >= len(audit.endpoints) * len(AUDITED_LANGUAGES)
    assert not audit.violations, "\n".join(["WCAG A/AA violations:", *audit.violations])
