"""A real Firefox ESR with JavaScript off (as Tor Browser at "Safest") walks the participant app."""

from __future__ import annotations

import contextlib
import datetime
import gc
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyotp
import pytest
from marionette_driver import Wait
from marionette_driver.by import By
from marionette_driver.errors import NoSuchElementException, StaleElementException
from marionette_driver.marionette import Marionette, WebElement

from stillroom.webapp.settings import LANGUAGES

from support import (
    LiveServer,
    RecordingRelay,
    add_therapist_by_cli,
)

FIREFOX = Path("/usr/bin/firefox-esr")
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Upper bound for every wait in this file, in seconds.
WAIT_SECONDS = 10

#: Tor Browser at "Safest", kept on loopback: anything not on 127.0.0.1 goes to a dead proxy.
PREFS: dict[str, object] = {
    "javascript.enabled": False,
    "privacy.resistFingerprinting": True,
    "svg.disabled": True,
    "webgl.disabled": True,
    "mathml.disabled": True,
    "browser.privatebrowsing.autostart": True,
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.allow_hijacking_localhost": False,
    "network.trr.mode": 5,
    "network.dns.native-is-localhost": True,
    "network.prefetch-next": False,
    "network.dns.disablePrefetch": True,
    "network.predictor.enabled": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "toolkit.telemetry.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
}

PROBE_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>probe</title></head>
<body>
<p id="marker">untouched</p>
<script>
document.getElementById("marker").textContent = "script ran";
new Image().src = "/hit?from=image";
fetch("/hit?from=fetch");
</script>
<noscript><p id="noscript">scripts are off</p></noscript>
</body></html>
"""

pytestmark = pytest.mark.browser


@contextlib.contextmanager
def running_firefox(prefs: dict[str, object], log_name: str) -> Iterator[Marionette]:
    """Start a headless Firefox ESR with ``prefs``; fail (never skip) when it is missing."""
    if not FIREFOX.exists():
        pytest.fail(f"{FIREFOX} is missing: install the firefox-esr package to run browser tests")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # While Firefox starts, the driver polls its port and drops each refused socket
        # unclosed; collect them here so they cannot fail a later test.
        warnings.filterwarnings("ignore", r"unclosed <socket\.socket", ResourceWarning)
        browser = Marionette(
            bin=str(FIREFOX),
            headless=True,
            port=0,
            startup_timeout=60,
            socket_timeout=60,
            prefs=prefs,
            gecko_log=str(SCREENSHOTS.parent / log_name),
        )
        gc.collect()
    try:
        browser.start_session()
        browser.timeout.page_load = 30
        browser.timeout.implicit = 0
        yield browser
    finally:
        browser.cleanup()


@pytest.fixture(scope="session")
def firefox() -> Iterator[Marionette]:
    """One headless Firefox ESR with Tor-Browser-like prefs for the whole session."""
    with running_firefox(PREFS, "gecko.log") as browser:
        yield browser


def wait(
    browser: Marionette, condition: Callable[[Marionette], object], seconds: float = WAIT_SECONDS
) -> object:
    """Wait (bounded) until ``condition`` is truthy, ignoring a page that is being replaced."""
    return Wait(
        browser,
        timeout=seconds,
        interval=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementException),
    ).until(condition)


def path_of(browser: Marionette) -> str:
    return urlsplit(str(browser.get_url())).path


def query_of(browser: Marionette) -> str:
    return urlsplit(str(browser.get_url())).query


def is_gone(element: WebElement) -> bool:
    """Return whether ``element`` belongs to a document that has been replaced."""
    try:
        element.tag_name  # noqa: B018 - touching the element is the check
    except (StaleElementException, NoSuchElementException):
        return True
    return False


def page_ready(browser: Marionette) -> bool:
    """Return whether the current document has finished loading (works with JS off)."""
    return bool(browser.execute_script("return document.readyState === 'complete';"))


def assert_no_scripts(browser: Marionette) -> None:
    assert browser.find_elements(By.TAG_NAME, "script") == [], browser.get_url()


def visit(browser: Marionette, url: str) -> None:
    """Load ``url`` and check that the page carries no script at all."""
    browser.navigate(url)
    wait(browser, page_ready)
    assert_no_scripts(browser)


def press(browser: Marionette, button: WebElement) -> None:
    """Click a form button and wait until the answer has replaced the page."""
    old_page = browser.find_element(By.TAG_NAME, "html")
    button.click()
    wait(browser, lambda b: is_gone(old_page) and page_ready(b))
    assert_no_scripts(browser)


def type_into(browser: Marionette, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def main_button(browser: Marionette) -> WebElement:
    """Return the submit button of the form inside <main>."""
    return browser.find_element(By.CSS_SELECTOR, "main form button")


def shown_passphrase(browser: Marionette) -> str:
    passphrase = str(browser.find_element(By.ID, "passphrase").text).strip()
    assert len(passphrase.split()) >= 5, passphrase
    return passphrase


def has(browser: Marionette, selector: str) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, selector))


def create_account(browser: Marionette, base: str) -> str:
    """Create an account through the create page and return its passphrase."""
    visit(browser, f"{base}/create")
    passphrase = shown_passphrase(browser)
    type_into(browser, "confirm", passphrase)
    press(browser, main_button(browser))
    return passphrase


def log_in(browser: Marionette, base: str, passphrase: str) -> None:
    visit(browser, f"{base}/login")
    type_into(browser, "passphrase", passphrase)
    press(browser, main_button(browser))


def log_out(browser: Marionette) -> None:
    press(browser, browser.find_element(By.CSS_SELECTOR, "footer form button"))


def start_clean(browser: Marionette, live_server: LiveServer) -> None:
    """Begin on the app with no session cookie left over from another test."""
    visit(browser, f"{live_server.url}/en/")
    browser.delete_all_cookies()


def test_javascript_is_really_off(firefox: Marionette) -> None:
    """The browser under test runs no page script at all, so the app is checked without JS."""
    hits: list[str] = []

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/hit"):
                hits.append(self.path)
                body, kind = b"", "text/plain"
            elif self.path == "/":
                body, kind = PROBE_PAGE, "text/html; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        host, port = server.server_address[:2]
        firefox.navigate(f"http://{host!s}:{port}/")
        wait(firefox, page_ready)
        time.sleep(1.0)  # give a script that did run time to reach the counter
        assert firefox.find_element(By.ID, "marker").text == "untouched"
        assert hits == []
        assert firefox.find_element(By.ID, "noscript").is_displayed()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=WAIT_SECONDS)
    assert not thread.is_alive()


@pytest.mark.parametrize("lang", ["en", "de", "cs"])
def test_participant_journey(firefox: Marionette, live_server: LiveServer, lang: str) -> None:
    """Create, log out, log in, replace the passphrase and delete all work with JavaScript off."""
    base = f"{live_server.url}/{lang}"
    start_clean(firefox, live_server)

    first = create_account(firefox, base)
    assert path_of(firefox) == f"/{lang}/account"
    assert query_of(firefox) == "done=created"
    assert has(firefox, "p.notice")
    assert first not in firefox.page_source, "the passphrase is shown only once"

    log_out(firefox)
    assert path_of(firefox) == f"/{lang}/"
    assert has(firefox, "p.notice")
    assert not has(firefox, "footer form"), "no log-out button once logged out"

    log_in(firefox, base, first)
    assert path_of(firefox) == f"/{lang}/account"

    visit(firefox, f"{base}/account/passphrase")
    type_into(firefox, "current", first)
    second = shown_passphrase(firefox)
    assert second != first
    type_into(firefox, "confirm", second)
    press(firefox, main_button(firefox))
    assert path_of(firefox) == f"/{lang}/account"
    assert query_of(firefox) == "done=replaced"
    assert has(firefox, "p.notice")
    log_out(firefox)

    log_in(firefox, base, first)
    assert path_of(firefox) == f"/{lang}/login"
    assert has(firefox, "p.error"), "the old passphrase no longer works"
    assert not has(firefox, "footer form")

    log_in(firefox, base, second)
    assert path_of(firefox) == f"/{lang}/account"

    visit(firefox, f"{base}/account/delete")
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "main button.danger"))
    assert path_of(firefox) == f"/{lang}/"
    assert query_of(firefox) == "done=deleted"
    assert has(firefox, "p.notice")

    log_in(firefox, base, second)
    assert path_of(firefox) == f"/{lang}/login"
    assert has(firefox, "p.error"), "a deleted account cannot be logged into"
    visit(firefox, f"{base}/account")
    assert path_of(firefox) == f"/{lang}/login", "the account page needs a login again"


def save_screenshot(browser: Marionette, name: str) -> Path:
    """Save a full-page PNG of the current page and check the common page frame."""
    languages = {
        str(link.get_attribute("hreflang"))
        for link in browser.find_elements(By.CSS_SELECTOR, "header nav a[hreflang]")
    }
    assert languages == set(LANGUAGES), (name, languages)
    help_links = [
        link
        for link in browser.find_elements(By.CSS_SELECTOR, "a[href]")
        if str(link.get_attribute("href")).endswith("/help")
    ]
    assert help_links, f"{name}: no link to the help page"
    target = SCREENSHOTS / f"{name}.png"
    target.write_bytes(browser.screenshot(format="binary", full=True))
    return target


def test_screenshot_every_page_in_every_language(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """Every page renders, with language and help links, in all five languages without JS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    start_clean(firefox, live_server)
    saved = []
    visit(firefox, f"{live_server.url}/")
    saved.append(save_screenshot(firefox, "root"))

    for lang in LANGUAGES:
        base = f"{live_server.url}/{lang}"
        for page, path in [
            ("home", "/"),
            ("help", "/help"),
            ("privacy", "/privacy"),
            ("not-found", "/no-such-page"),
            ("create", "/create"),
        ]:
            visit(firefox, base + path)
            saved.append(save_screenshot(firefox, f"{lang}-{page}"))

        passphrase = create_account(firefox, base)
        assert path_of(firefox) == f"/{lang}/account"
        log_out(firefox)

        visit(firefox, f"{base}/login")
        saved.append(save_screenshot(firefox, f"{lang}-login"))
        log_in(firefox, base, passphrase)
        assert path_of(firefox) == f"/{lang}/account"

        for page, path in [
            ("account", "/account"),
            ("passphrase", "/account/passphrase"),
            ("delete", "/account/delete"),
        ]:
            visit(firefox, base + path)
            assert path_of(firefox) == f"/{lang}{path}"
            saved.append(save_screenshot(firefox, f"{lang}-{page}"))
        log_out(firefox)
        assert path_of(firefox) == f"/{lang}/"

    assert len(saved) == 1 + 9 * len(LANGUAGES)
    for shot in saved:
        data = shot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, shot


def set_date_and_time(browser: Marionette, day: datetime.date, clock: str) -> None:
    """Fill the date and time fields.

    Marionette's typed keys do not reach the segments of Firefox's date and time
    widgets, so the values are set directly, in the ISO form the widgets submit.
    """
    for element_id, value in (("date", day.isoformat()), ("time", clock)):
        field = browser.find_element(By.ID, element_id)
        browser.execute_script("arguments[0].value = arguments[1];", script_args=(field, value))


def choose_time_of(browser: Marionette, therapist: str) -> None:
    """On a booking page, pick the first free time of ``therapist`` and send the form."""
    labels = [
        label
        for label in browser.find_elements(By.CSS_SELECTOR, "fieldset label")
        if therapist in str(label.text)
    ]
    assert labels, browser.page_source
    labels[0].find_element(By.CSS_SELECTOR, "input").click()
    press(browser, browser.find_element(By.CSS_SELECTOR, "main form:not(.zone) button"))


def shot(browser: Marionette, name: str) -> None:
    (SCREENSHOTS / f"{name}.png").write_bytes(browser.screenshot(format="binary", full=True))


#: The passphrase each therapist enrolled here was given, by login name.
THERAPIST_PASSPHRASES: dict[str, str] = {}


def enrol_therapist(browser: Marionette, live_server: LiveServer, name: str) -> tuple[str, str]:
    """Add a therapist with the CLI and enrol through the portal; return login name, secret.

    The therapist reads the passphrase the page made and types it back, as a person would.
    """
    login_name, token = add_therapist_by_cli(live_server.data_dir, name)
    visit(browser, f"{live_server.portal_url}/en/enrol/{token}")
    shot(browser, "portal-enrol")
    secret = str(browser.find_element(By.ID, "totp-secret").text).replace(" ", "")
    passphrase = str(browser.find_element(By.ID, "passphrase").text)
    type_into(browser, "confirm", passphrase)
    type_into(browser, "code", pyotp.TOTP(secret).now())
    press(browser, main_button(browser))
    assert path_of(browser) == "/en/" and query_of(browser) == "done=enrolled"
    THERAPIST_PASSPHRASES[login_name] = passphrase
    return login_name, secret


def test_therapist_publishes_and_participant_books_without_javascript(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """Enrol with TOTP, log in, publish; book, see, cancel, book again; the therapist sees it."""
    start_clean(firefox, live_server)
    portal = f"{live_server.portal_url}/en"
    name = f"Therapist{time.monotonic_ns() % 100000}"

    login_name, secret = enrol_therapist(firefox, live_server, name)
    shot(firefox, "portal-home")

    log_out(firefox)
    visit(firefox, f"{portal}/login")
    type_into(firefox, "name", login_name)
    type_into(firefox, "passphrase", THERAPIST_PASSPHRASES[login_name])
    # The enrolment used the current 30-second step; the next one is accepted already.
    type_into(firefox, "code", pyotp.TOTP(secret).at(time.time() + 30))
    press(firefox, main_button(firefox))
    assert path_of(firefox) == "/en/", firefox.page_source

    in_two_days = datetime.date.today() + datetime.timedelta(days=2)
    visit(firefox, f"{portal}/availability")
    set_date_and_time(firefox, in_two_days, "10:00")
    type_into(firefox, "weeks", "2")
    press(firefox, main_button(firefox))
    assert query_of(firefox) == "done=published"
    assert len(firefox.find_elements(By.CSS_SELECTOR, "ul.slots li")) >= 2
    shot(firefox, "portal-availability")

    base = f"{live_server.url}/en"
    create_account(firefox, base)

    def book_first_of_mine() -> None:
        visit(firefox, f"{base}/book")
        choose_time_of(firefox, name)
        assert query_of(firefox) == "done=booked"

    book_first_of_mine()
    shot(firefox, "participant-booked")
    assert name in str(firefox.find_element(By.CSS_SELECTOR, ".appointment").text)

    firefox.find_element(By.PARTIAL_LINK_TEXT, "Cancel").click()
    wait(firefox, page_ready)
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "main button.danger"))
    assert query_of(firefox) == "done=cancelled"
    assert not has(firefox, ".appointment")

    book_first_of_mine()

    visit(firefox, f"{portal}/")
    [element] = firefox.find_elements(By.CSS_SELECTOR, "strong.pseudonym")
    pseudonym = str(element.text)
    assert len(pseudonym) == 9 and pseudonym[4] == "-", pseudonym
    shot(firefox, "portal-appointments")
    visit(firefox, f"{portal}/availability")
    booked = [
        item
        for item in firefox.find_elements(By.CSS_SELECTOR, "ul.slots li")
        if pseudonym in str(item.text)
    ]
    assert len(booked) == 1

    # The participant moves the appointment to the same therapist's time a week later.
    visit(firefox, f"{base}/account")
    before = str(firefox.find_element(By.CSS_SELECTOR, ".appointment strong").text)
    firefox.find_element(By.PARTIAL_LINK_TEXT, "Move").click()
    wait(firefox, page_ready)
    firefox.find_element(By.PARTIAL_LINK_TEXT, "Later times").click()
    wait(firefox, page_ready)
    choose_time_of(firefox, name)
    assert query_of(firefox) == "done=moved"
    after = str(firefox.find_element(By.CSS_SELECTOR, ".appointment strong").text)
    assert after != before

    # The therapist has to cancel, with a note that only the participant can read.
    visit(firefox, f"{portal}/")
    firefox.find_element(By.CSS_SELECTOR, "ul.appointments a[href$='/cancel']").click()
    wait(firefox, page_ready)
    type_into(firefox, "note", "I am ill that day; please book another time.")
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "main button.danger"))
    assert query_of(firefox) == "done=cancelled"
    visit(firefox, f"{base}/account")
    note = firefox.find_element(By.CSS_SELECTOR, ".appointment.cancelled q.note")
    assert str(note.text) == "I am ill that day; please book another time."
    shot(firefox, "participant-cancelled-by-therapist")


def test_portal_pages_in_every_language(firefox: Marionette, live_server: LiveServer) -> None:
    """The portal's public pages render in all five languages, with no script, without JS."""
    start_clean(firefox, live_server)
    _, token = add_therapist_by_cli(live_server.data_dir, f"Polyglot{time.monotonic_ns() % 100000}")
    for lang in LANGUAGES:
        for page, path in [
            ("login", "/login"),
            ("privacy", "/privacy"),
            ("enrol", f"/enrol/{token}"),
        ]:
            visit(firefox, f"{live_server.portal_url}/{lang}{path}")
            assert firefox.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
            languages = {
                str(link.get_attribute("hreflang"))
                for link in firefox.find_elements(By.CSS_SELECTOR, "header nav a[hreflang]")
            }
            assert languages == set(LANGUAGES), (lang, page)
            shot(firefox, f"portal-{lang}-{page}")


def frame_text(browser: Marionette, frame_class: str) -> str:
    """Return the text of one of the chat page's frames, and come back to the page."""
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, f"iframe.{frame_class}"))
    try:
        return str(browser.find_element(By.TAG_NAME, "body").text)
    finally:
        browser.switch_to_frame()


def open_chat_on_both_sides(
    browser: Marionette, live_server: LiveServer, base: str, minutes_ahead: int = 70
) -> tuple[str, str]:
    """Enrol a therapist with a time ``minutes_ahead``; a new participant books it.

    By default the time is just over an hour ahead (the earliest participants can book);
    the live server opens chats two hours before they start, so this one is open now.
    The participant's pages are loaded from ``base`` (the live server, or a relay in
    front of it). Ends on the participant's chat page; returns the handles of the
    therapist's tab and the participant's tab.
    """
    name = f"Chatter{time.monotonic_ns() % 100000}"
    enrol_therapist(browser, live_server, name)
    soon = datetime.datetime.now(ZoneInfo("Europe/Berlin")) + datetime.timedelta(
        minutes=minutes_ahead
    )
    soon = soon.replace(minute=soon.minute - soon.minute % 5)
    visit(browser, f"{live_server.portal_url}/en/availability")
    set_date_and_time(browser, soon.date(), soon.strftime("%H:%M"))
    press(browser, main_button(browser))
    assert query_of(browser) == "done=published"
    therapist_tab = browser.current_window_handle

    participant_tab = browser.open(type="tab", focus=True)["handle"]
    browser.switch_to_window(participant_tab)
    visit(browser, f"{base}/")
    if has(browser, "footer form"):  # a participant of an earlier test (cookies ignore ports)
        log_out(browser)
    create_account(browser, base)
    visit(browser, f"{base}/book")
    choose_time_of(browser, name)
    browser.find_element(By.PARTIAL_LINK_TEXT, "Open the chat").click()
    wait(browser, page_ready)
    opens_now = minutes_ahead < 120
    assert ("The chat is open" in frame_text(browser, "feed")) == opens_now
    return therapist_tab, participant_tab


def in_view(browser: Marionette, element: WebElement) -> bool:
    """Return whether ``element`` is wholly visible in its frame, without scrolling."""
    return bool(
        browser.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            " return r.top >= 0 && r.left >= 0"
            " && r.bottom <= window.innerHeight && r.right <= window.innerWidth;",
            script_args=(element,),
        )
    )


def therapist_writes(browser: Marionette, live_server: LiveServer, text: str) -> float:
    """In the therapist's tab, open today's chat and send ``text``; return when it was sent."""
    visit(browser, f"{live_server.portal_url}/en/")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Chat").click()
    wait(browser, page_ready)
    compose = browser.find_element(By.CSS_SELECTOR, "iframe.compose")
    assert in_view(browser, compose), "the portal's chat fits a small window too"
    browser.switch_to_frame(compose)
    browser.find_element(By.ID, "text").send_keys(text)
    sent = time.monotonic()
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    assert "Sent." in str(browser.find_element(By.TAG_NAME, "body").text)
    # The confirmation must not push the box or the button out of the small frame.
    for part in ("#text", "form button", "[role=status]"):
        assert in_view(browser, browser.find_element(By.CSS_SELECTOR, part)), part
    browser.switch_to_frame()
    return sent


def test_a_chat_opened_early_is_ready_to_write(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """Nothing reloads the compose frame: before the chat opens it already holds the form.

    A message sent too early is refused beside the button, its text kept, all in view.
    """
    start_clean(firefox, live_server)
    open_chat_on_both_sides(firefox, live_server, f"{live_server.url}/en", minutes_ahead=180)
    assert "The chat opens at" in frame_text(firefox, "feed")
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    notice = firefox.find_element(By.CSS_SELECTOR, ".send .notice")
    assert "The chat opens at" in str(notice.text)
    for part in ("#text", "form button", ".send .notice"):
        assert in_view(firefox, firefox.find_element(By.CSS_SELECTOR, part)), part
    firefox.find_element(By.ID, "text").send_keys("Written while waiting.")
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "form button"))
    refusal = firefox.find_element(By.CSS_SELECTOR, "[role=alert]")
    assert "not open now" in str(refusal.text) and "The chat opens at" in str(refusal.text)
    assert firefox.find_element(By.ID, "text").get_property("value") == "Written while waiting."
    for part in ("#text", "form button", "[role=alert]"):
        assert in_view(firefox, firefox.find_element(By.CSS_SELECTOR, part)), part
    shot(firefox, "participant-chat-too-early")
    firefox.switch_to_frame()


def test_chat_without_javascript(firefox: Marionette, live_server: LiveServer) -> None:
    """Both sides chat with JS off; the feed keeps refreshing through 304s; drafts survive."""
    start_clean(firefox, live_server)
    # The participant's traffic passes a relay that records each response's status and size.
    relay = RecordingRelay(int(live_server.url.rsplit(":", 1)[1]))
    therapist_tab, participant_tab = open_chat_on_both_sides(
        firefox, live_server, f"http://127.0.0.1:{relay.port}/en"
    )
    # The one script of the service (the live chat) is on this page; here it does not run.
    [script] = firefox.find_elements(By.TAG_NAME, "script")
    assert "/script/live." in str(script.get_attribute("src"))

    # Even in this small window the messages and the whole compose frame fit.
    assert firefox.execute_script("return window.innerHeight;") <= 600
    assert in_view(firefox, firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))

    # A draft in the compose frame, not sent.
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    firefox.find_element(By.ID, "text").send_keys("a draft that must survive")
    firefox.switch_to_frame()
    # Nothing happens: the feed reloads and is answered 304, in one Tor cell, and goes on.
    deadline = time.monotonic() + 40
    while len(relay.responses_to("/feed")) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    feeds = relay.responses_to("/feed")
    assert [item.status for item in feeds[:3]] == [200, 304, 304], feeds
    assert all(item.size <= 498 for item in feeds[1:3]), feeds

    # The therapist writes; the participant's feed shows it without any script.
    firefox.switch_to_window(therapist_tab)
    therapist_writes(firefox, live_server, "Hello, thank you for coming.")

    firefox.switch_to_window(participant_tab)
    wait(firefox, lambda b: "Hello, thank you for coming." in frame_text(b, "feed"), 25)
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    draft = firefox.find_element(By.ID, "text")
    assert draft.get_property("value") == "a draft that must survive"
    firefox.find_element(By.ID, "text").send_keys(" and now it is sent")
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "form button"))
    firefox.switch_to_frame()
    shot(firefox, "participant-chat")

    firefox.switch_to_window(therapist_tab)
    wait(firefox, lambda b: "a draft that must survive and now it is sent" in frame_text(b, "feed"))
    shot(firefox, "portal-chat")
    firefox.close()
    firefox.switch_to_window(participant_tab)

    # Sending too fast: the calm refusal stands beside the button, the text stays in the box.
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    for attempt in range(12):  # the limit is 10 messages in 10 s
        firefox.find_element(By.ID, "text").send_keys(f"quick {attempt}")
        press(firefox, firefox.find_element(By.CSS_SELECTOR, "form button"))
        if firefox.find_elements(By.CSS_SELECTOR, "[role=alert]"):
            break
    firefox.switch_to_frame()
    shot(firefox, "participant-chat-too-fast")
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    alert = firefox.find_element(By.CSS_SELECTOR, "[role=alert]")
    assert "very quickly" in str(alert.text)
    assert firefox.find_element(By.ID, "text").get_property("value") == f"quick {attempt}"
    for part in ("#text", "form button", "[role=alert]"):
        assert in_view(firefox, firefox.find_element(By.CSS_SELECTOR, part)), part
    firefox.switch_to_frame()
    later = relay.responses_to("/feed")[3:]
    assert any(item.status == 200 for item in later), "new messages come as a new page"
    relay.close()


@pytest.fixture
def firefox_with_javascript() -> Iterator[Marionette]:
    """A second Firefox ESR, this one with JavaScript on (Tor Browser at "Standard")."""
    with running_firefox({**PREFS, "javascript.enabled": True}, "gecko-js.log") as browser:
        yield browser


#: The feed frame's address and whether it refreshes itself, read inside the frame.
FEED_MODE = (
    "return {query: location.search,"
    " refresh: Boolean(document.querySelector('meta[http-equiv=refresh]'))};"
)
#: Where focus is: the page's focused element, and the one inside the compose frame.
COMPOSE_FOCUS = (
    "const f = document.querySelector('iframe.compose');"
    " return [document.activeElement.className, f.contentDocument.activeElement.id];"
)


def feed_mode(browser: Marionette) -> dict[str, object]:
    """Return the feed frame's query and whether it carries a meta refresh."""
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.feed"))
    try:
        return dict(browser.execute_script(FEED_MODE))
    finally:
        browser.switch_to_frame()


def test_chat_with_javascript_arrives_through_the_websocket(
    firefox_with_javascript: Marionette, live_server: LiveServer
) -> None:
    """With JavaScript on, the production server's WebSocket brings a new message at once.

    Once the socket is open, the script shows the feed without a timed refresh
    (``?live=1``) in both apps, so the socket alone can have brought the message. After
    a send, the script puts focus back in the box.
    """
    browser = firefox_with_javascript
    therapist_tab, participant_tab = open_chat_on_both_sides(
        browser, live_server, f"{live_server.url}/en"
    )
    live = {"query": "?live=1", "refresh": False}
    wait(browser, lambda b: feed_mode(b) == live)
    browser.switch_to_window(therapist_tab)
    sent = therapist_writes(browser, live_server, "Arrived through the socket.")
    wait(browser, lambda b: feed_mode(b) == live)  # the portal's page too
    assert browser.execute_script(COMPOSE_FOCUS) == ["compose", "text"], "back in the box"
    browser.switch_to_window(participant_tab)
    wait(browser, lambda b: "Arrived through the socket." in frame_text(b, "feed"))
    assert time.monotonic() - sent < 3
    assert feed_mode(browser) == live
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.compose"))
    browser.find_element(By.ID, "text").send_keys("And my answer.")
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    browser.switch_to_frame()
    wait(browser, lambda b: b.execute_script(COMPOSE_FOCUS) == ["compose", "text"])


def test_chat_with_javascript_carries_on_when_the_socket_fails(
    firefox_with_javascript: Marionette, live_server: LiveServer
) -> None:
    """Where no WebSocket gets through (a proxy without them), the feed reloads by itself."""
    browser = firefox_with_javascript
    relay = RecordingRelay(int(live_server.url.rsplit(":", 1)[1]), refuse_websockets=True)
    therapist_tab, participant_tab = open_chat_on_both_sides(
        browser, live_server, f"http://127.0.0.1:{relay.port}/en"
    )
    wait(browser, lambda _: relay.refused)  # the script tried its socket, and it failed
    browser.switch_to_window(therapist_tab)
    before = len(relay.responses_to("/feed"))
    therapist_writes(browser, live_server, "Arrived by the frame's own reload.")
    browser.switch_to_window(participant_tab)
    # The frame reloads every 10 s while the therapist is quiet: allow two rounds.
    wait(browser, lambda b: "Arrived by the frame's own reload." in frame_text(b, "feed"), 25)
    wait(browser, lambda _: 200 in [x.status for x in relay.responses_to("/feed")[before:]])
    assert relay.sockets_closed == 0 and not relay.responses_to("/live HTTP")
    relay.close()


def test_live_script_stops_once_the_session_has_ended(
    firefox_with_javascript: Marionette, live_server: LiveServer
) -> None:
    """A logout in another tab closes the chat's socket, and the script does not knock again.

    Without the close code that says so, the script would retry every few seconds and
    be refused each time.
    """
    browser = firefox_with_javascript
    relay = RecordingRelay(int(live_server.url.rsplit(":", 1)[1]))
    base = f"http://127.0.0.1:{relay.port}/en"
    therapist_tab, _ = open_chat_on_both_sides(browser, live_server, base)
    wait(browser, lambda _: [item.status for item in relay.responses_to("/live HTTP")] == [101])
    browser.switch_to_window(browser.open(type="tab", focus=True)["handle"])
    visit(browser, f"{base}/account")
    log_out(browser)
    browser.switch_to_window(therapist_tab)
    therapist_writes(browser, live_server, "This wakes the participant's socket.")
    wait(browser, lambda _: relay.sockets_closed == 1)
    time.sleep(5)  # the script's first retry would come after 2 s
    assert [item.status for item in relay.responses_to("/live HTTP")] == [101]
    relay.close()
