"""Therapist support as a therapist meets it, in a real Firefox ESR with JavaScript off.

One real ``stillroom serve --no-tor`` with every support feature on, the example snippet
library, and the tiny random-weight model (tests/tinygguf.py) served by the real
llama.cpp server. The tests follow one chat in order: open, a risk topic comes up, a
snippet is chosen, the chat closes, a draft is written and saved, the model stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyotp
import pytest
from loadclients import Chat, Connection, form_token, session_cookie
from marionette_driver.by import By
from marionette_driver.marionette import Marionette, WebElement
from test_assist_model import wait_for_model
from test_assist_portal import EXAMPLES, HARD_EVENING
from test_browser_chat import in_frame
from test_browser_nojs import (
    PREFS,
    SCREENSHOTS,
    is_gone,
    page_ready,
    press,
    running_firefox,
    type_into,
    wait,
)
from test_held_feed import book_and_serve, port_of, write
from tinygguf import write_tiny_model

from stillroom.webapp.assist.llama import Supervisor, socket_path
from stillroom.webapp.notes import clean_note
from stillroom.webapp.settings import Settings

from support import LiveServer, rows, stop_server

pytestmark = pytest.mark.browser

#: A participant's message that touches no risk topic.
QUIET = "Thank you, the breathing exercise helped me sleep better this week."
#: What the therapist adds to the model's draft before saving it.
EDIT = "Edited by me: we agreed to meet again next Tuesday."
#: The support frame's text, its reload address, and its snippet links.
PANEL = (
    "const b = document.body; if (!b || document.readyState !== 'complete') return null;"
    " return {text: b.textContent, query: location.search,"
    " links: Array.from(document.querySelectorAll('a[target=compose]'), a => a.href)};"
)
#: Seconds a held frame may take to show news (it answers within a second when held).
NEWS_SECONDS = 10


@dataclass
class Served:
    server: LiveServer
    chat: Chat
    model: Supervisor
    model_settings: Settings

    def count(self, sql: str) -> int:
        """Return one number from the server's own database."""
        [(number,)] = rows(self.model_settings, sql)
        return int(number)


async def participant_logs_in(chat: Chat, port: int) -> None:
    """Log the participant in through the real form, over HTTP; keep the cookie."""
    door = Connection(port)
    _, _, page = await door.request("GET", "/en/login")
    status, headers, _ = await door.request(
        "POST", "/en/login", form={"form_token": form_token(page), "passphrase": chat.passphrase}
    )
    door.close()
    assert status == 302, status
    chat.participant_cookie = session_cookie(headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The server with support on, one open chat, and the model in a process of its own.

    The model runs from here, not from serve, so that a test can stop it; serve finds it
    on the socket serve itself would use.
    """
    model = write_tiny_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    data_dir = tmp_path_factory.mktemp("d") / "i"  # short: a socket's path has 107 bytes
    model_settings = Settings(data_dir=data_dir, assist="summary", assist_model=model)
    extra = {
        "STILLROOM_ASSIST": "related,risk,summary",
        "STILLROOM_ASSIST_SNIPPETS": str(EXAMPLES),
        "STILLROOM_ASSIST_MODEL_ADDRESS": f"unix:{socket_path(model_settings)}",
    }
    server, [chat] = book_and_serve(data_dir, extra, 1)
    supervisor = Supervisor(model_settings, first_pause=0.1)
    try:
        asyncio.run(participant_logs_in(chat, port_of(server.url)))
        supervisor.start()
        wait_for_model(model_settings)
        yield Served(server, chat, supervisor, model_settings)
    finally:
        supervisor.stop()
        stop_server(server)


@pytest.fixture(scope="module")
def firefox(served: Served) -> Iterator[Marionette]:
    """One Firefox for the module, with the therapist logged in through the portal's form."""
    with running_firefox(PREFS, "gecko-assist.log") as browser:
        portal, chat = served.server.portal_url, served.chat
        browser.navigate(f"{portal}/en/login")
        type_into(browser, "name", chat.login_name)
        type_into(browser, "passphrase", chat.therapist_passphrase)
        # The enrolment used the step of its own moment; a later one is accepted.
        code = pyotp.TOTP(chat.totp_secret).at(max(time.time(), chat.enrolled_at + 30))
        type_into(browser, "code", code)
        press(browser, browser.find_element(By.CSS_SELECTOR, "main form button"))
        assert "/login" not in str(browser.get_url()), browser.page_source
        yield browser


def open_chat(browser: Marionette, served: Served) -> None:
    """Open the chat page in the portal (it carries the live script, unused here).

    Both the feed and the support frame hold their reloads from the start, and Firefox
    may then show the page as loading for as long as they hold: so the test waits for
    the frames to be there, not for the page to be "complete". A timed first reload of
    the support frame would end that, but a timed refresh fails WCAG 2.2.1 (axe's
    meta-refresh rule, in tests/test_a11y.py).
    """
    old_page = browser.find_element(By.TAG_NAME, "html")
    url = f"{served.server.portal_url}/en/chat/{served.chat.appointment}"
    browser.execute_script("window.location.href = arguments[0];", script_args=(url,))
    wait(
        browser,
        lambda b: (
            is_gone(old_page)
            and b.find_element(By.CSS_SELECTOR, "iframe.assist")
            and b.find_element(By.CSS_SELECTOR, "iframe.feed")
        ),
    )


def submit(browser: Marionette, button: WebElement) -> None:
    """Send a form and wait for the answer (the chat page carries its unused live script)."""
    old_page = browser.find_element(By.TAG_NAME, "html")
    button.click()
    wait(browser, lambda b: is_gone(old_page) and page_ready(b))


def panel(browser: Marionette) -> dict[str, object]:
    return in_frame(browser, "assist", PANEL)


def test_the_support_frame_shows_snippets_then_a_prompt_by_itself(
    firefox: Marionette, served: Served
) -> None:
    """Three snippets once the participant writes; a risk topic brings a quiet prompt,
    with no click: the frame's held reload works in the browser."""
    open_chat(firefox, served)
    assert "appears here once the participant has written" in str(panel(firefox)["text"])
    first_document = firefox.find_element(By.CSS_SELECTOR, "iframe.assist")

    write(served.server, served.chat, QUIET, side="participant")
    wait(firefox, lambda b: len(panel(b)["links"]) == 3, NEWS_SECONDS)  # type: ignore[arg-type]
    quiet = panel(firefox)
    assert "You might ask" not in str(quiet["text"])
    # The frame's own (held) reload brought it: ?first= just after the page opened, ?seen= later.
    assert str(quiet["query"]).startswith(("?seen=", "?first=")), "the frame reloaded itself"

    started = time.monotonic()
    write(served.server, served.chat, HARD_EVENING, side="participant")
    wait(firefox, lambda b: "You might ask" in str(panel(b)["text"]), NEWS_SECONDS)
    print(f"the prompt showed {time.monotonic() - started:.2f} s after the message")
    text = str(panel(firefox)["text"]).lower()
    assert "suicide" in text or "self-harm" in text
    assert len(panel(firefox)["links"]) == 3  # type: ignore[arg-type]
    assert not is_gone(first_document), "only the frame changed, never the page"


def test_a_snippet_link_fills_the_message_box_and_sends_nothing(
    firefox: Marionette, served: Served
) -> None:
    """Following a snippet's link puts its text into the compose box; nothing is sent."""
    write(served.server, served.chat, QUIET, side="participant")
    open_chat(firefox, served)
    wait(firefox, lambda b: len(panel(b)["links"]) == 3)  # type: ignore[arg-type]
    messages = served.count("SELECT count(*) FROM messages")
    # Scrolled to first, as a person would: Marionette scrolls a link into view inside
    # its frame but not the page around the frame, and a click below the page's fold
    # goes nowhere (checked on a bare page of two frames, too).
    frame = firefox.find_element(By.CSS_SELECTOR, "iframe.assist")
    firefox.execute_script("arguments[0].scrollIntoView();", script_args=(frame,))
    firefox.switch_to_frame(frame)
    try:
        firefox.find_elements(By.CSS_SELECTOR, "a[target=compose]")[0].click()
    finally:
        firefox.switch_to_frame()

    def box_text(browser: Marionette) -> str:
        browser.switch_to_frame(browser.find_element(By.CSS_SELECTOR, "iframe.compose"))
        try:
            return str(browser.find_element(By.ID, "text").get_property("value"))
        finally:
            browser.switch_to_frame()

    text = str(wait(firefox, box_text))
    assert len(text.strip()) > 20, text
    time.sleep(1)  # a send would have landed by now
    assert served.count("SELECT count(*) FROM messages") == messages, "nothing was sent"
    feed = in_frame(firefox, "feed", "return {text: document.body.textContent};")
    assert text.strip()[:30] not in str(feed["text"])
    assert box_text(firefox) == text, "the box keeps it for the therapist to edit or send"


#: The support frame at its size: whether anything runs off to the side, and whether its
#: last snippet link comes wholly into view when the frame is scrolled to it.
FIT = (
    "const d = document.documentElement, links = document.querySelectorAll('a[target=compose]');"
    " const a = links[links.length - 1]; a.scrollIntoView();"
    " const r = a.getBoundingClientRect();"
    " return {width: innerWidth, height: innerHeight, wide: d.scrollWidth, tall: d.scrollHeight,"
    " reached: r.top >= 0 && r.bottom <= innerHeight && r.right <= innerWidth};"
)


def test_the_support_frame_stays_usable_at_200_percent_zoom(
    firefox: Marionette, served: Served
) -> None:
    """Zoomed to 200 %, the frame keeps a readable width, nothing runs off to the side,
    and its links stay within reach by scrolling the frame."""
    write(served.server, served.chat, HARD_EVENING, side="participant")
    open_chat(firefox, served)
    wait(firefox, lambda b: len(panel(b)["links"]) == 3)  # type: ignore[arg-type]
    with firefox.using_context(firefox.CONTEXT_CHROME):
        firefox.execute_script("FullZoom.setZoom(2);")
    try:
        time.sleep(0.5)
        page = firefox.execute_script("return [innerWidth, document.documentElement.scrollWidth];")
        frame = in_frame(firefox, "assist", FIT)
        (SCREENSHOTS / "portal-assist-zoom-200.png").write_bytes(
            firefox.screenshot(format="binary", full=True)
        )
        print(f"at 200 %: page (width, scroll width) {page}, support frame {frame}")
        assert page[1] <= page[0], "the page runs off to the side"
        assert int(frame["width"]) >= 320, frame  # type: ignore[call-overload]
        assert frame["wide"] <= frame["width"], "the frame runs off to the side"
        assert frame["reached"], "a snippet link cannot be scrolled into view"
    finally:
        with firefox.using_context(firefox.CONTEXT_CHROME):
            firefox.execute_script("FullZoom.setZoom(1);")


def test_a_closed_chat_drafts_into_a_field_the_therapist_edits_and_saves(
    firefox: Marionette, served: Served
) -> None:
    """After the chat closes, the draft fills an editable field with the model's words;
    the edited text is what lands in the therapist's notes."""
    chat = served.chat
    firefox.navigate(f"{served.server.portal_url}/en/chat/{chat.appointment}/close")
    wait(firefox, page_ready)
    submit(firefox, firefox.find_element(By.CSS_SELECTOR, "main button.danger"))
    assert "done=closed" in str(firefox.get_url())
    assert served.count("SELECT count(*) FROM notes") == 0

    # Clicked from chrome-privileged script: Marionette's own click waits for the whole
    # page, and the point is to watch the field while the draft streams in.
    button = firefox.find_element(By.CSS_SELECTOR, "#draft form button")
    old_page = firefox.find_element(By.TAG_NAME, "html")
    started = time.monotonic()
    firefox.execute_script("arguments[0].click();", script_args=(button,))
    seen: list[tuple[float, int]] = []
    while time.monotonic() - started < 60:
        if not is_gone(old_page):
            time.sleep(0.02)
            continue
        state = firefox.execute_script(
            "const t = document.getElementById('draft');"
            " return [document.readyState, t ? t.value.length : -1];"
        )
        seen.append((round(time.monotonic() - started, 2), int(state[1])))
        if state[0] == "complete":
            break
        time.sleep(0.05)
    print(f"the draft field while the page streamed (seconds, characters): {seen}")
    lengths = sorted({length for _, length in seen})
    print(f"distinct lengths seen: {lengths}")

    field = firefox.find_element(By.ID, "draft")
    draft = str(field.get_property("value"))
    assert draft.strip(), "the model's words fill the field"
    # The service's risk lines stand apart from the model's words, which cannot imitate them.
    risks = str(firefox.find_element(By.ID, "risks").text)
    assert "Not discussed" in risks and "Not discussed" not in draft, risks
    assert not firefox.find_elements(By.CSS_SELECTOR, "[role=alert]")
    # Firefox fills the field as the words arrive, not only at the end.
    assert any(0 < length < len(draft) for length in lengths), lengths
    field.send_keys(f"\n{EDIT}")
    edited = str(field.get_property("value"))
    assert edited.endswith(EDIT), edited[-200:]
    press(firefox, firefox.find_element(By.CSS_SELECTOR, "main form button"))
    assert "done=notes-saved" in str(firefox.get_url())

    assert served.count("SELECT count(*) FROM notes") == 1
    firefox.navigate(str(firefox.get_url()))  # the notes as the server shows them again
    wait(firefox, page_ready)
    notes = str(firefox.find_element(By.ID, "text").get_property("value"))
    # The random model writes control characters too; notes keep text as clean_note makes it.
    # The risk lines are saved after the edited draft.
    assert notes.startswith(clean_note(edited).strip()), notes[:200]
    assert notes.index(EDIT) < notes.index("Not discussed")


def test_with_the_model_stopped_a_draft_says_so_calmly_with_a_time(
    firefox: Marionette, served: Served
) -> None:
    """No model: a calm alert with minutes, the field and the save button still there."""
    served.model.stop()
    open_chat(firefox, served)
    submit(firefox, firefox.find_element(By.CSS_SELECTOR, "#draft form button"))
    [alert] = firefox.find_elements(By.CSS_SELECTOR, "[role=alert]")
    message = str(alert.text)
    print(f"with no model: {message}")
    assert "minutes" in message and "not running" in message
    assert "Not discussed" in str(firefox.find_element(By.ID, "risks").text)
    assert firefox.find_element(By.CSS_SELECTOR, "main form button").is_displayed()
    open_chat(firefox, served)  # and the chat page still works
    wait(firefox, lambda b: "You might ask" in str(panel(b)["text"]))
