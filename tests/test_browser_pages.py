"""Participant and portal pages outside the chat, as Firefox ESR with JavaScript off shows them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from marionette_driver.by import By
from marionette_driver.marionette import Marionette
from test_browser_nojs import PREFS, running_firefox, visit

from support import LiveServer, add_therapist_by_cli

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    """A headless Firefox ESR at Tor Browser's "Safest" level (SVG off, no script)."""
    with running_firefox(PREFS, "gecko-pages.log") as browser:
        yield browser


def line_count(browser: Marionette, element_id: str) -> int:
    """Return on how many lines the inline element ``element_id`` is laid out."""
    count = browser.execute_script(
        "return document.getElementById(arguments[0]).getClientRects().length;", [element_id]
    )
    return int(count)


def test_the_privacy_pages_links_each_name_their_table(
    firefox: Marionette, live_server: LiveServer
) -> None:
    visit(firefox, f"{live_server.url}/en/privacy")
    links = firefox.find_elements(By.CSS_SELECTOR, "main a[href*='/privacy/']")
    headings = [str(h.text) for h in firefox.find_elements(By.CSS_SELECTOR, "main h2")]
    labels = [str(link.computed_label) for link in links]
    assert len(labels) == len(headings) >= 7
    assert len(set(labels)) == len(labels), labels  # a screen reader's list tells them apart
    for label, heading in zip(labels, headings, strict=True):
        assert label.startswith("What each part holds") and heading in label


def narrow_to_phone_width(browser: Marionette) -> None:
    """Lay the page out 360 px wide, as on a small phone.

    A desktop Firefox window cannot be made narrower than 500 px, so the root element
    is narrowed instead (through Marionette: the page's own scripts stay off).
    """
    browser.execute_script("document.documentElement.style.width = '360px';")


def test_enrolment_offers_the_key_as_text_before_the_code_and_keeps_the_name_whole(
    firefox: Marionette, live_server: LiveServer
) -> None:
    login, token = add_therapist_by_cli(live_server.data_dir, "Mira")
    visit(firefox, f"{live_server.portal_url}/en/enrol/{token}")
    narrow_to_phone_width(firefox)
    key = firefox.find_element(By.ID, "totp-secret")
    qr = firefox.find_element(By.CSS_SELECTOR, ".qr")
    assert re.fullmatch(r"[A-Z2-7]{4}( [A-Z2-7]{1,4})+", str(key.text)), key.text
    assert key.is_displayed() and key.rect["y"] < qr.rect["y"]  # read before the blank space
    name = firefox.find_element(By.ID, "login-name")
    assert name.text == login and "-" in login
    assert name.rect["width"] < 300  # short enough to fit on a phone's line
    assert line_count(firefox, "login-name") == 1
    # However the sentence falls, the name moves whole to the next line: even in a
    # column narrower than the name it is not split at its hyphen.
    firefox.execute_script(
        "const name = document.getElementById('login-name');"
        "name.parentElement.style.width = (name.getBoundingClientRect().width * 0.75) + 'px';"
    )
    assert line_count(firefox, "login-name") == 1
