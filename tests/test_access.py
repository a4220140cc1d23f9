"""Access, over every route: other people's objects are not there, and GET changes nothing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import STARTS, AuthActions, Chat, form_fields, generated, rows

#: Routes whose variables are not somebody's object (a language, a table of the
#: inventory, an enrolment link) or that are no page (the live chat's socket).
NOT_OBJECTS = {"lang", "table_name", "token", "digest_in_url"}


SUPPORT_ENDPOINTS = {"portal.chat_assist", "portal.draft", "portal.save_draft"}


def object_rules(app) -> list:
    """Every route with a variable that names one person's object."""
    # With therapist support off, its routes answer 404 to everyone, owner included.
    off = set() if app.config.get("ASSIST") else SUPPORT_ENDPOINTS
    return [
        rule
        for rule in app.url_map.iter_rules()
        if set(rule.arguments) - NOT_OBJECTS
        and not rule.endpoint.endswith("_live")
        and rule.endpoint not in off
    ]


def fill(rule, values: dict[str, str]) -> str:
    path = rule.rule
    for name in rule.arguments:
        path = re.sub(rf"<[^>]*:?{name}>", values.get(name, "en"), path)
    return path


def test_there_are_object_routes_on_both_sides(app, portal_app):
    assert len(object_rules(app)) >= 5 and len(object_rules(portal_app)) >= 5


def assert_hidden(app, stranger, owner, values: dict[str, str], secret: str, page: str) -> None:
    """Every object route of ``app``, by every method, is a 404 for ``stranger``.

    ``page`` is any page of the stranger's that carries a form token for their posts;
    ``owner`` must still reach each address by GET, so no 404 comes from a wrong address.
    """
    token = form_fields(stranger.get(page).get_data(as_text=True))
    for rule in object_rules(app):
        path = fill(rule, values)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = stranger.open(path, method=method, data=token if method == "POST" else None)
            assert response.status_code == 404, (method, rule.rule)
            assert secret not in response.get_data(as_text=True)
            if method == "GET":
                assert owner.get(path).status_code != 404, rule.rule


def test_every_object_route_hides_a_participants_objects_from_another(chat: Chat, app):
    chat.at(STARTS)
    assert chat.say("participant", "only mine").status_code == 200
    stranger = AuthActions(app.test_client())
    stranger.create()
    values = {"appointment_id": chat.id}
    assert_hidden(app, stranger.client, chat.auth.client, values, "only mine", "/en/account")
    assert rows(chat.settings, "SELECT count(*) FROM messages") == [(1,)]
    assert chat.feed("participant").status_code == 200


def test_every_object_route_hides_a_therapists_objects_from_another(chat: Chat, portal_app):
    chat.at(STARTS)
    assert chat.say("therapist", "for my client").status_code == 200
    [[slot_id]] = rows(chat.settings, "SELECT slot_id FROM appointments")
    other = type(chat.therapist)(portal_app.test_client(), chat.clock, chat.settings.database_path)
    other.create("Bruno", ("en",))
    [[pseudonym]] = rows(chat.settings, "SELECT pseudonym FROM pairs")
    values = {"appointment_id": chat.id, "slot_id": slot_id, "pseudonym": pseudonym}
    assert_hidden(portal_app, other.client, chat.therapist.client, values, "for my client", "/en/")
    assert rows(chat.settings, "SELECT count(*) FROM appointments") == [(1,)]


@pytest.mark.parametrize("side", ["participant", "therapist"])
def test_get_on_a_state_changing_route_is_405(chat: Chat, app, portal_app, side):
    chat.at(STARTS)
    flask_app, client = (
        (app, chat.auth.client) if side == "participant" else (portal_app, chat.therapist.client)
    )
    [[slot_id]] = rows(chat.settings, "SELECT slot_id FROM appointments")
    changing = [
        rule
        for rule in flask_app.url_map.iter_rules()
        if "POST" in rule.methods and "GET" not in rule.methods
    ]
    assert changing, "the app has routes that only change state"
    for rule in changing:
        path = fill(rule, {"appointment_id": chat.id, "slot_id": slot_id})
        assert client.get(path).status_code == 405, rule.rule
    assert rows(chat.settings, "SELECT count(*) FROM appointments") == [(1,)]


def test_logging_out_anywhere_ends_every_session_of_the_account(chat: Chat, app, portal_app):
    chat.at(STARTS)
    elsewhere = AuthActions(app.test_client())
    assert elsewhere.login(chat.passphrase).status_code == 302
    assert elsewhere.client.get("/en/account").status_code == 200
    chat.auth.logout()
    assert elsewhere.client.get("/en/account").status_code == 302, "the other browser is out too"
    assert rows(chat.settings, "SELECT count(*) FROM sessions") == [(0,)]

    other_desk = type(chat.therapist)(
        portal_app.test_client(), chat.clock, chat.settings.database_path
    )
    other_desk.secret, other_desk.login_names = chat.therapist.secret, chat.therapist.login_names
    other_desk.passphrases = chat.therapist.passphrases
    assert other_desk.login().status_code == 302
    chat.therapist.logout()
    assert other_desk.client.get("/en/").status_code == 302
    assert rows(chat.settings, "SELECT count(*) FROM therapist_sessions") == [(0,)]


@pytest.mark.parametrize("side", ["participant", "therapist"])
def test_generated_object_addresses_never_reach_anothers_objects(chat: Chat, app, portal_app, side):
    """Generated: any object route and method, with the other's real ids or near misses of them.

    Near misses (one character changed, another case, cut short, grown) must not find the
    object either, for the stranger or for the owner, and nothing may change.
    """
    chat.at(STARTS)
    assert chat.say(side, "kept to the two of us").status_code == 200
    [[slot_id]] = rows(chat.settings, "SELECT slot_id FROM appointments")
    real = {"appointment_id": chat.id, "slot_id": slot_id}
    if side == "participant":
        flask_app, owner = app, chat.auth.client
        stranger = AuthActions(app.test_client())
        stranger.create()
        page = "/en/account"
    else:
        flask_app, owner = portal_app, chat.therapist.client
        stranger = type(chat.therapist)(
            portal_app.test_client(), chat.clock, chat.settings.database_path
        )
        stranger.create("Bruno", ("en",))
        page = "/en/"
    token = form_fields(stranger.client.get(page).get_data(as_text=True))
    before = rows(chat.settings, "SELECT count(*) FROM messages, appointments, slots")

    def near_misses(value: str) -> st.SearchStrategy[str]:
        return st.one_of(
            st.just(value),
            st.integers(0, len(value) - 1).flatmap(
                lambda i: st.sampled_from("0123456789abcdef").map(
                    lambda c: value[:i] + c + value[i + 1 :]
                )
            ),
            st.just(value.upper()),
            st.integers(1, len(value) - 1).map(lambda n: value[:n]),
            st.just(value + "0"),
            st.text("0123456789abcdef", min_size=1, max_size=40),
        )

    @generated(300)
    @given(data=st.data())
    def probe(data) -> None:
        rule = data.draw(st.sampled_from(object_rules(flask_app)))
        method = data.draw(st.sampled_from(sorted(rule.methods - {"HEAD", "OPTIONS"})))
        values = {name: data.draw(near_misses(real[name])) for name in real}
        path = fill(rule, values)
        form = token if method == "POST" else None
        response = stranger.client.open(path, method=method, data=form)
        assert response.status_code == 404, (method, path)
        assert "kept to the two of us" not in response.get_data(as_text=True)
        changed = any(values[name] != real[name] for name in rule.arguments if name in real)
        if changed and method == "GET":
            assert owner.get(path).status_code == 404, path

    probe()
    assert rows(chat.settings, "SELECT count(*) FROM messages, appointments, slots") == before


def test_a_session_id_planted_before_login_is_never_accepted(chat: Chat, app, portal_app):
    """Session fixation: a cookie set before login (by someone else) opens nothing after it."""
    chat.at(STARTS)
    planted = "planted-by-someone-else-0123456789abcdef"
    for flask_app, login, home, who in (
        (app, lambda: chat.auth.login(chat.passphrase), "/en/account", "participant"),
        (portal_app, chat.therapist.login, "/en/", "therapist"),
    ):
        victim = chat.auth.client if who == "participant" else chat.therapist.client
        cookie = "stillroom" if who == "participant" else "stillroom_portal"
        victim.delete_cookie(cookie, domain="127.0.0.1")
        victim.set_cookie(cookie, planted, domain="127.0.0.1")
        assert login().status_code == 302
        issued = victim.get_cookie(cookie, domain="127.0.0.1")
        assert issued is not None and issued.value != planted, who
        attacker = flask_app.test_client()
        attacker.set_cookie(cookie, planted, domain="127.0.0.1")
        assert attacker.get(home).status_code == 302, f"the planted id stays logged out: {who}"
