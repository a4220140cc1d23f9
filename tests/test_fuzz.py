"""Bad input, generated: no request makes either app fail, and nothing comes back unescaped.

Hypothesis sends thousands of requests across every route and form of both apps, with a
logged-in participant and therapist and a booked chat behind them: null bytes, bidi
overrides, invalid UTF-8, lone surrogates, huge and missing fields, wrong methods, and
text in the five languages. A marker with markup in it must never come back as markup.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from stillroom.webapp.settings import LANGUAGES

from support import STARTS, Chat, form_fields, generated

#: Markup that must only ever come back escaped.
MARKER = '<b id="fuzz">'
SAMPLES = [
    "Guten Tag, ich möchte über meine Woche sprechen.",
    "Dobrý den, chtěl bych mluvit o svém týdnu. Žluťoučký kůň.",
    "Olá, gostaria de falar sobre a minha semana.",
    "Hola, quiero hablar de mi semana, ¿vale?",
    "Hello, I would like to talk about my week.",
]
NASTY_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SAMPLES),
    st.sampled_from(["\x00", "\u202e\u2066abc", "\ufeff", "\r\n\r\n", "%00", "../../x", ""]),
    st.builds(lambda n: "x" * n, st.integers(min_value=2_000, max_value=40_000)),
    st.builds(lambda a, b: a + MARKER + b, st.text(max_size=10), st.sampled_from(SAMPLES)),
    # Markup in a text just over a limit: the pages that show a rejected text again.
    st.builds(lambda n: MARKER + "x" * n, st.integers(min_value=1_990, max_value=2_100)),
)
#: Raw bytes for a form body: invalid UTF-8 and an encoded lone surrogate among them.
RAW_BYTES = st.sampled_from([b"%ff%fe", b"%ed%a0%80", b"%c0%af", b"\xff\xfe", b"%e2%80%ae"])
#: Endpoints that would end the session the rest of the run needs; they still get every
#: request without a valid form token (refused, never failing).
ENDS_THE_SESSION = {
    "participant.logout",
    "participant.delete",
    "participant.change_passphrase",
    "portal.logout",
    "portal.password",
}
REQUESTS_PER_EXAMPLE = 5
EXAMPLES = 1_200  # 6,000 requests anywhere, and 4,000 more into the forms themselves
FORM_EXAMPLES = 4_000


class World:
    """Both apps' clients in a booked, open chat, and the forms and ids they use."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.clients = {
            "participant": chat.auth.client,
            "therapist": chat.therapist.client,
        }
        self.rules = {
            side: [
                rule
                for rule in client.application.url_map.iter_rules()
                if not rule.endpoint.endswith(("_live", "stylesheet", "live_script"))
            ]
            for side, client in self.clients.items()
        }
        self.fields: set[str] = {"form_token", "pending"}
        #: The fields each route's own page asks for (a POST goes back to its page).
        self.fields_of: dict[str, list[str]] = {}
        for side, client in self.clients.items():
            for rule in self.rules[side]:
                if "GET" in rule.methods:
                    page = client.get(self.path(rule, {})).get_data(as_text=True)
                    found = sorted(set(re.findall(r'name="?([a-z_]+)', page)))
                    self.fields_of[rule.endpoint] = found
                    self.fields.update(found)
        self.ids = [chat.id, "0" * 32, "../" + chat.id]
        self.sent = 0
        self.posts: list[tuple[str, Any]] = []

    def token(self, side: str) -> str:
        """Return a valid form token of this side's session."""
        page = self.clients[side].get("/en/account" if side == "participant" else "/en/")
        return form_fields(page.get_data(as_text=True))["form_token"]

    def path(self, rule, values: dict[str, str]) -> str:
        """Fill the rule's variables: a language, a real or a fuzzed id."""
        path = rule.rule
        for name in rule.arguments:
            value = values.get(name, "en" if name == "lang" else self.chat.id)
            path = re.sub(rf"<[^>]*:?{name}>", urllib.parse.quote(value, safe=""), path)
        return path


@pytest.fixture
def world(chat: Chat) -> Iterator[World]:
    chat.at(STARTS)
    chat.say("participant", "a first message")
    world = World(chat)
    yield world
    assert world.sent >= REQUESTS_PER_EXAMPLE * EXAMPLES, "every generated request was sent"


@pytest.fixture
def forms(chat: Chat) -> Iterator[World]:
    """The same world, for posting into each form of both apps."""
    chat.at(STARTS)
    chat.say("participant", "a first message")
    world = World(chat)
    world.posts = [
        (side, rule)
        for side in sorted(world.rules)
        for rule in world.rules[side]
        if "POST" in rule.methods
    ]
    yield world
    assert world.sent >= FORM_EXAMPLES, "every generated form was posted"


def one_request(data: st.DataObject, world: World) -> None:
    side = data.draw(st.sampled_from(sorted(world.clients)))
    client = world.clients[side]
    rule = data.draw(st.sampled_from(world.rules[side]))
    values = {}
    for name in rule.arguments:  # mostly real values, so that requests reach the views
        real = st.sampled_from(LANGUAGES) if name == "lang" else st.sampled_from(world.ids)
        values[name] = data.draw(real if data.draw(st.integers(0, 4)) else NASTY_TEXT)
    path = world.path(rule, values)
    allowed = sorted(rule.methods - {"HEAD", "OPTIONS"})
    method = data.draw(st.sampled_from([*allowed, "POST", "GET", "PUT"]))
    own = world.fields_of.get(rule.endpoint) or sorted(world.fields)
    names = data.draw(st.sets(st.sampled_from(own), max_size=len(own)))
    names |= data.draw(st.sets(st.sampled_from(sorted(world.fields)), max_size=2))
    form = {name: data.draw(NASTY_TEXT) for name in sorted(names)}
    if data.draw(st.integers(0, 3)) and rule.endpoint not in ENDS_THE_SESSION:
        form["form_token"] = world.token(side)
    if data.draw(st.integers(0, 9)) == 0:
        body = urllib.parse.urlencode(form).encode() + b"&text=" + data.draw(RAW_BYTES)
        response = client.open(
            path,
            method=method,
            data=body,
            content_type="application/x-www-form-urlencoded",
        )
    else:
        response = client.open(path, method=method, data=form if method != "GET" else None)
    assert response.status_code < 500, (method, path, form)
    if response.mimetype == "text/html":
        page = response.get_data(as_text=True)
        assert MARKER not in page, (method, path)


@generated(EXAMPLES)
@given(data=st.data())
def test_generated_requests_anywhere_fail_nothing_and_echo_nothing(world, data):
    for _ in range(REQUESTS_PER_EXAMPLE):
        one_request(data, world)
        world.sent += 1


@generated(FORM_EXAMPLES)
@given(data=st.data())
def test_generated_form_posts_fail_nothing_and_echo_nothing(forms, data):
    """Every form, posted with its own fields, a valid token and generated values."""
    side, rule = data.draw(st.sampled_from(forms.posts))
    own = forms.fields_of.get(rule.endpoint) or ["text"]
    form = {name: data.draw(NASTY_TEXT) for name in own}
    if rule.endpoint not in ENDS_THE_SESSION:
        form["form_token"] = forms.token(side)
    response = forms.clients[side].post(forms.path(rule, {}), data=form)
    assert response.status_code < 500, (rule.rule, form)
    if response.mimetype == "text/html":
        assert MARKER not in response.get_data(as_text=True), rule.rule
    forms.sent += 1


XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "<svg/onload=alert(1)>",
    "javascript:alert(1)",
    '<a href="javascript:alert(1)">click</a>',
    "<iframe src=//example.org></iframe>",
    "{{7*7}}",
    "</textarea><script>alert(1)</script>",
    "<style>body{display:none}</style>",
    "\u202e<b>reversed</b>",
]


def assert_inert(page: str, payload: str) -> None:
    """The payload is shown as text: escaped, never as markup or a link."""
    if "<" in payload:
        assert payload not in page
    # Shown as typed, or with bidi and other format characters taken out (notes drop them).
    plain = "".join(char for char in payload if unicodedata.category(char) != "Cf")
    assert str(escape(payload)) in page or str(escape(plain)) in page
    assert 'href="javascript' not in page


@pytest.mark.parametrize("payload", XSS)
def test_xss_payloads_render_inert_in_the_chat(chat, payload):
    chat.at(STARTS)
    assert chat.say("participant", payload).status_code == 200
    assert chat.say("therapist", payload).status_code == 200
    for client in (chat.auth.client, chat.therapist.client):
        for path in (f"/en/chat/{chat.id}/feed", f"/en/chat/{chat.id}/history"):
            assert_inert(client.get(path).get_data(as_text=True), payload)


@pytest.mark.parametrize("payload", XSS)
def test_xss_payloads_render_inert_in_a_cancellation_note(chat, payload):
    chat.at(STARTS - 3 * 24 * 3600)
    page = f"/en/appointments/{chat.id}/cancel"
    assert chat.therapist.post(page, {"note": payload}, page=page).status_code == 302
    assert_inert(chat.auth.client.get("/en/account").get_data(as_text=True), payload)
