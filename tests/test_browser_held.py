"""The held feed in a real Firefox ESR with JavaScript off: messages arrive at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from loadclients import Chat, create_chats, log_in, percentile
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_nojs import PREFS, page_ready, press, running_firefox, wait
from test_browser_nojs import log_in as log_in_browser
from test_held_feed import port_of, write

from stillroom.webapp.settings import Settings

from support import LiveServer, start_server, stillroom_env, stop_server

pytestmark = pytest.mark.browser

MESSAGES = 40
FEED_TEXT = (
    "const f = document.querySelector('iframe.feed');"
    " return f && f.contentDocument && f.contentDocument.body"
    "   ? f.contentDocument.body.textContent : '';"
)


@pytest.fixture(scope="module")
def holding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Chat]]:
    """A server with the default hold, one open chat, and the therapist logged in over HTTP."""
    data_dir = tmp_path_factory.mktemp("browser-held") / "instance"
    extra = {
        "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
        "STILLROOM_CHAT_RATE_MESSAGES": "1000",
        "STILLROOM_CHAT_RATE_SECONDS": "1",
    }
    [chat] = create_chats(1, Settings.load(stillroom_env(data_dir, 0, extra)))
    server = start_server(data_dir, extra)
    asyncio.run(log_in(chat, port_of(server.url), port_of(server.portal_url)))
    yield server, chat
    stop_server(server)


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    with running_firefox(PREFS, "gecko-held.log") as browser:
        yield browser


def open_connections(server: LiveServer) -> dict[int, str]:
    """Return the server's connections on the participant port: client port -> state."""
    port = port_of(server.url)
    return {
        c.raddr.port: str(c.status)
        for c in psutil.Process(server.process.pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.raddr
    }


def tab_is_busy(browser: Marionette) -> bool:
    """Return whether Firefox shows the tab as loading: its throbber, or a status line."""
    with browser.using_context(browser.CONTEXT_CHROME):
        state = browser.execute_script(
            "const panel = document.getElementById('statuspanel');"
            " return {busy: gBrowser.selectedTab.hasAttribute('busy'),"
            " loading: gBrowser.selectedBrowser.webProgress.isLoadingDocument,"
            " status: panel ? (panel.getAttribute('label') || '') : ''};"
        )
    print(f"Firefox while the feed is held: {state}")
    return bool(state["busy"] or state["status"])


def test_messages_reach_a_held_feed_at_once(
    firefox: Marionette, holding: tuple[LiveServer, Chat]
) -> None:
    """40 messages from the therapist appear within 1 s (p50) and 2 s (p99); the draft,
    the send button and the links work meanwhile; leaving ends the held reload."""
    server, chat = holding
    base = f"{server.url}/en"
    log_in_browser(firefox, base, chat.passphrase)
    firefox.navigate(f"{base}/chat/{chat.appointment}")  # carries the (unused) live script
    wait(firefox, page_ready)
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    firefox.find_element(By.ID, "text").send_keys("a draft in progress")
    firefox.switch_to_frame()
    time.sleep(2)  # the frame's first reload is held by now

    # What the browser shows while a reload is held.
    frame_state = firefox.execute_script(
        "return document.querySelector('iframe.feed').contentDocument.readyState;"
    )
    print(f"while held: the frame's document is {frame_state}")
    assert frame_state == "complete"
    # Measured in Firefox ESR 153: no throbber, no status line, nothing loading. Should
    # that change, the chat page must say calmly why the tab looks busy (issue 18).
    assert not tab_is_busy(firefox), "the tab now shows a held reload as loading"

    sent: dict[str, float] = {}

    def therapist_writes() -> None:
        for number in range(MESSAGES):
            time.sleep(random.uniform(0.5, 1.0))
            text = f"Therapist message {number:02d}."
            sent[text] = time.monotonic()
            write(server, chat, text)

    writer = threading.Thread(target=therapist_writes, daemon=True)
    writer.start()
    shown: dict[str, float] = {}
    deadline = time.monotonic() + MESSAGES * 1.0 + 10
    while (writer.is_alive() or len(shown) < len(sent)) and time.monotonic() < deadline:
        text = str(firefox.execute_script(FEED_TEXT))
        moment = time.monotonic()
        for message in list(sent):
            if message not in shown and message in text:
                shown[message] = moment
        time.sleep(0.02)
    writer.join(5)
    delays = [shown[m] - sent[m] for m in sent if m in shown]
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    print(f"held feed delivery over {len(delays)} messages: p50 {p50:.3f} s, p99 {p99:.3f} s")
    assert len(shown) == MESSAGES, sorted(set(sent) - set(shown))
    assert p50 <= 1.0 and p99 <= 2.0, (p50, p99)

    # The draft was never touched; the send button works while the feed is held.
    firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.compose"))
    draft = firefox.find_element(By.ID, "text")
    assert draft.get_property("value") == "a draft in progress"
    draft.send_keys(", now sent")
    started = time.monotonic()
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "form button"))
    assert time.monotonic() - started < 2
    firefox.switch_to_frame()
    wait(firefox, lambda b: "a draft in progress, now sent" in str(b.execute_script(FEED_TEXT)), 2)

    # A link works while the feed is held, and leaving ends the held reload on the server.
    time.sleep(1.5)  # the next reload is held again
    before = open_connections(server)
    started = time.monotonic()
    firefox.find_element(By.PARTIAL_LINK_TEXT, "Read the whole conversation").click()
    wait(firefox, page_ready)
    assert time.monotonic() - started < 2
    assert "Therapist message 00." in str(firefox.find_element(By.TAG_NAME, "main").text)
    time.sleep(1)
    after = open_connections(server)
    print(f"server connections before leaving {before}, after {after}")
    assert "CLOSE_WAIT" not in after.values(), after
    assert set(before) - set(after), "the held reload's connection was let go"
