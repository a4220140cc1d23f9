"""The chat as people see it, in a real Firefox ESR with JavaScript off (Tor Browser at "Safest").

Layout is read from the browser itself (computed styles, boxes), so these tests fail
when a stylesheet rule does not apply, not only when markup changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from marionette_driver.by import By
from marionette_driver.marionette import Marionette, WebElement
from test_browser_nojs import (
    PREFS,
    frame_text,
    is_gone,
    open_chat_on_both_sides,
    page_ready,
    path_of,
    press,
    query_of,
    running_firefox,
    shot,
    therapist_writes,
    visit,
    wait,
)

from support import LiveServer

pytestmark = pytest.mark.browser

#: Seconds the participant's feed may take to show news: two of its idle reloads.
FEED_WAIT = 25


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    """One headless Firefox ESR with Tor-Browser-like prefs (script off) for this module."""
    # A tall headless screen, so that a window can hold a phone's screen at a phone's zoom.
    os.environ["MOZ_HEADLESS_HEIGHT"] = "1400"
    try:
        with running_firefox(PREFS, "gecko-chat.log") as browser:
            yield browser
    finally:
        del os.environ["MOZ_HEADLESS_HEIGHT"]


@pytest.fixture
def firefox_with_javascript() -> Iterator[Marionette]:
    """A Firefox ESR with JavaScript on (Tor Browser at "Standard")."""
    with running_firefox({**PREFS, "javascript.enabled": True}, "gecko-chat-js.log") as browser:
        yield browser


def close_other_tabs(browser: Marionette, keep: str) -> None:
    """Close every tab but ``keep``, so that each test starts with one."""
    for handle in browser.window_handles:
        if handle != keep:
            browser.switch_to_window(handle)
            browser.close()
    browser.switch_to_window(keep)


def participant_writes(browser: Marionette, text: str) -> None:
    """On the participant's chat page, send ``text`` from the compose frame."""
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.compose"))
    browser.find_element(By.ID, "text").send_keys(text)
    press(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    browser.switch_to_frame()


def box(browser: Marionette, element: WebElement) -> dict[str, float]:
    """Return the element's box on screen and the borders it is drawn with."""
    return dict(
        browser.execute_script(
            "const e = arguments[0], r = e.getBoundingClientRect(), s = getComputedStyle(e);"
            " return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,"
            " borderLeft: parseFloat(s.borderLeftWidth),"
            " borderRight: parseFloat(s.borderRightWidth),"
            " paddingLeft: parseFloat(s.paddingLeft)};",
            script_args=(element,),
        )
    )


def text_starts_at(browser: Marionette, bubble: WebElement) -> float:
    """Return how far right of the bubble's content edge its message text is drawn."""
    return float(
        browser.execute_script(
            "const li = arguments[0], bdi = li.querySelector('bdi');"
            " const range = document.createRange();"
            " range.setStart(bdi.firstChild, 0); range.setEnd(bdi.firstChild, 1);"
            " const s = getComputedStyle(li);"
            " const edge = li.getBoundingClientRect().left + parseFloat(s.borderLeftWidth)"
            "   + parseFloat(s.paddingLeft);"
            " return range.getBoundingClientRect().left - edge;",
            script_args=(bubble,),
        )
    )


def assert_sides_differ(browser: Marionette, mine_label: str, theirs_label: str) -> None:
    """In the current document, one's own and the other side's messages differ without colour."""
    mine = browser.find_element(By.CSS_SELECTOR, "li.mine")
    theirs = browser.find_element(By.CSS_SELECTOR, "li.theirs")
    mine_box, theirs_box = box(browser, mine), box(browser, theirs)
    # Where they stand: one's own pushed right, the other's left, by far more than a pixel.
    assert mine_box["left"] - theirs_box["left"] >= 32, (mine_box, theirs_box)
    assert mine_box["right"] - theirs_box["right"] >= 32, (mine_box, theirs_box)
    # Which edge is thick.
    assert mine_box["borderRight"] >= 4 and mine_box["borderLeft"] <= 1, mine_box
    assert theirs_box["borderLeft"] >= 4 and theirs_box["borderRight"] <= 1, theirs_box
    # A short label anyone can see, above the text.
    for bubble, label in ((mine, mine_label), (theirs, theirs_label)):
        who = bubble.find_element(By.CSS_SELECTOR, ".who")
        assert who.is_displayed() and str(who.text) == label
        who_box, bubble_box = box(browser, who), box(browser, bubble)
        assert bubble_box["left"] <= who_box["left"] and who_box["right"] <= bubble_box["right"]
        # The text starts at the bubble's edge: no space before it.
        assert abs(text_starts_at(browser, bubble)) < 1, label


def test_the_two_sides_of_a_chat_differ_without_colour(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """In both apps, in the feed and in the history, each side is placed, edged and labelled."""
    visit(firefox, f"{live_server.url}/en/")
    firefox.delete_all_cookies()
    therapist_tab, participant_tab = open_chat_on_both_sides(
        firefox, live_server, f"{live_server.url}/en"
    )
    participant_writes(firefox, "Hello, I am here.")
    firefox.switch_to_window(therapist_tab)
    therapist_writes(firefox, live_server, "Welcome, take your time.")
    for tab, other, name in (
        (therapist_tab, "Participant:", "portal"),
        (participant_tab, "Therapist:", "participant"),
    ):
        firefox.switch_to_window(tab)
        wait(firefox, lambda b: "Welcome, take your time." in frame_text(b, "feed"), FEED_WAIT)
        firefox.switch_to_frame(firefox.find_element(By.CSS_SELECTOR, "iframe.feed"))
        assert_sides_differ(firefox, "You:", other)
        firefox.switch_to_frame()
        shot(firefox, f"{name}-chat-sides")
        firefox.find_element(By.PARTIAL_LINK_TEXT, "Read the whole conversation").click()
        wait(firefox, page_ready)
        assert_sides_differ(firefox, "You:", other)
    close_other_tabs(firefox, participant_tab)


def test_closing_a_chat_asks_first_and_the_participant_learns_who_ended_it(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """One click does not end a chat; once ended, the participant's pages say by whom."""
    visit(firefox, f"{live_server.url}/en/")
    firefox.delete_all_cookies()
    therapist_tab, participant_tab = open_chat_on_both_sides(
        firefox, live_server, f"{live_server.url}/en"
    )
    account = f"{live_server.url}/en/account"
    firefox.switch_to_window(therapist_tab)
    therapist_writes(firefox, live_server, "We will stop here for today.")
    chat_page = str(firefox.get_url()).split("#")[0]
    firefox.find_element(By.LINK_TEXT, "Close the chat now").click()
    wait(firefox, page_ready)
    assert path_of(firefox).endswith("/close")
    shot(firefox, "portal-chat-close-confirm")
    # Changing one's mind leaves the chat open.
    firefox.find_element(By.LINK_TEXT, "Keep the chat open").click()
    wait(firefox, page_ready)
    assert str(firefox.get_url()).split("#")[0] == chat_page
    assert "The chat is open" in frame_text(firefox, "feed")
    firefox.find_element(By.LINK_TEXT, "Close the chat now").click()
    wait(firefox, page_ready)
    old_page = firefox.find_element(By.TAG_NAME, "html")
    firefox.find_element(By.CSS_SELECTOR, "main form button").click()  # lands on the chat page
    wait(firefox, lambda b: is_gone(old_page) and page_ready(b))
    assert query_of(firefox) == "done=closed"
    assert "You have ended the chat." in frame_text(firefox, "feed")

    firefox.switch_to_window(participant_tab)
    wait(firefox, lambda b: "The therapist has ended the chat." in frame_text(b, "feed"), FEED_WAIT)
    shot(firefox, "participant-chat-ended-by-therapist")
    visit(firefox, account)
    page = str(firefox.find_element(By.TAG_NAME, "main").text)
    assert "The therapist has ended this chat." in page
    assert "Open the chat" not in page and "can no longer be moved" not in page
    assert firefox.find_elements(By.LINK_TEXT, "Book a time")
    close_other_tabs(firefox, participant_tab)


def test_on_a_phone_the_feed_fills_the_screen_and_long_messages_stay_readable(
    firefox: Marionette, live_server: LiveServer
) -> None:
    """At 360 by 640 the chat page lands on the messages and the box to write in, together."""
    visit(firefox, f"{live_server.url}/en/")
    firefox.delete_all_cookies()
    _, participant_tab = open_chat_on_both_sides(firefox, live_server, f"{live_server.url}/en")
    close_other_tabs(firefox, participant_tab)
    participant_writes(firefox, "A long message that goes on. " * 20)
    for number in range(6):
        participant_writes(firefox, f"Short message {number}.")
    # Headless Firefox keeps windows at least 500 px wide: zooming in gives the page
    # the CSS viewport of a 360 px wide phone instead.
    ratio = 500 / 360
    original = firefox.window_rect
    chrome = int(firefox.execute_script("return window.outerHeight - window.innerHeight;"))
    firefox.set_window_rect(width=500, height=round(640 * ratio) + chrome)
    try:
        check_phone_layout(firefox, live_server, ratio)
    finally:
        with firefox.using_context(firefox.CONTEXT_CHROME):
            firefox.execute_script("FullZoom.setZoom(1);")
        firefox.set_window_rect(width=original["width"], height=original["height"])


def on_screen(browser: Marionette, element: WebElement) -> bool:
    """Return whether ``element`` is wholly visible in its document (half a pixel of slack)."""
    edges = box(browser, element)
    size = browser.execute_script("return [window.innerWidth, window.innerHeight];")
    return bool(
        edges["top"] >= -0.5
        and edges["left"] >= -0.5
        and edges["bottom"] <= size[1] + 0.5
        and edges["right"] <= size[0] + 0.5
    )


def check_phone_layout(firefox: Marionette, live_server: LiveServer, ratio: float) -> None:
    """Open the chat from the account page and read what a phone's screen holds."""
    visit(firefox, f"{live_server.url}/en/account")
    with firefox.using_context(firefox.CONTEXT_CHROME):
        firefox.execute_script("FullZoom.setZoom(arguments[0]);", script_args=[ratio])
    width, height = firefox.execute_script("return [window.innerWidth, window.innerHeight];")
    # As wide as a phone; the headless screen allows a little less than its height.
    assert abs(width - 360) <= 4 and 560 <= height <= 640, (width, height)
    firefox.find_element(By.PARTIAL_LINK_TEXT, "Open the chat").click()
    wait(firefox, page_ready)
    shot(firefox, "participant-chat-phone")
    feed = firefox.find_element(By.CSS_SELECTOR, "iframe.feed")
    compose = firefox.find_element(By.CSS_SELECTOR, "iframe.compose")
    assert on_screen(firefox, feed) and on_screen(firefox, compose)
    height = box(firefox, feed)["bottom"] - box(firefox, feed)["top"]
    assert height >= 300, height  # was 160 px, about a message and a half
    firefox.switch_to_frame(feed)
    bubbles = firefox.find_elements(By.CSS_SELECTOR, "li.mine")
    assert len(bubbles) == 7  # more than the four the feed used to keep
    widths = [box(firefox, b)["right"] - box(firefox, b)["left"] for b in bubbles]
    assert min(widths) >= 200, widths  # a line holds several words
    assert firefox.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth;"
    ), "nothing runs off to the side"
    # The newest short ones are whole on the screen, several of them at once.
    whole = [str(b.text) for b in bubbles if on_screen(firefox, b)]
    assert len(whole) >= 4 and "Short message 5." in whole[0], whole
    # The long one keeps a readable width; the feed scrolls up to it.
    assert "A long message" in str(bubbles[-1].get_property("textContent"))
    firefox.switch_to_frame()


def test_the_script_note_shows_only_where_script_runs(
    firefox: Marionette, firefox_with_javascript: Marionette, live_server: LiveServer
) -> None:
    """With script on, one quiet line says Safest turns it off and the chat works either way."""
    for browser, shown in ((firefox, False), (firefox_with_javascript, True)):
        visit(browser, f"{live_server.url}/en/")
        browser.delete_all_cookies()
        _, participant_tab = open_chat_on_both_sides(browser, live_server, f"{live_server.url}/en")
        note = browser.find_element(By.ID, "script-note")
        if shown:
            wait(browser, lambda b: b.find_element(By.ID, "script-note").is_displayed())
            assert "Safest" in str(note.text) and "works either way" in str(note.text)
        else:
            assert not note.is_displayed()
        close_other_tabs(browser, participant_tab)


#: What the feed frame shows now, read inside it.
FEED_STATE = (
    "return {query: location.search, loaded: performance.timeOrigin,"
    " refresh: Boolean(document.querySelector('meta[http-equiv=refresh]')),"
    " text: document.body ? document.body.textContent : ''};"
)
#: Where focus is inside the current document, and whether it shows as keyboard focus.
FOCUS = (
    "const e = document.activeElement, s = e ? getComputedStyle(e) : null;"
    " return {tag: e ? e.tagName : null, id: e ? e.id : null, label: e ? e.ariaLabel : null,"
    " visible: e ? e.matches(':focus-visible') : false,"
    " outline: s ? s.outlineStyle + ' ' + s.outlineWidth : '',"
    " focused: document.hasFocus()};"
)


def in_frame(browser: Marionette, frame_class: str, script: str) -> dict[str, object]:
    """Run ``script`` inside one of the chat page's frames and come back to the page."""
    for _ in range(20):  # a feed that has just answered may be between two documents
        browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, f"iframe.{frame_class}"))
        try:
            result = browser.execute_script(script)
        finally:
            browser.switch_to_frame()
        if result is not None:
            return dict(result)
        time.sleep(0.05)
    raise AssertionError(f"the {frame_class} frame never had a document to read")


def press_tab(browser: Marionette) -> None:
    """Press the Tab key, as a keyboard user does."""
    browser.actions.sequence("key", "keyboard").key_down("\ue004").key_up("\ue004").perform()


def click_in_feed(browser: Marionette, link_text: str) -> None:
    """Follow a link inside the feed frame."""
    browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.feed"))
    try:
        browser.find_element(By.LINK_TEXT, link_text).click()
    finally:
        browser.switch_to_frame()
