"""HTTP hygiene, language in the path, bad input: on every route of the participant app."""

from __future__ import annotations

import base64
import errno
import logging
import re
import sqlite3

import pytest

from stillroom.webapp import db
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.security import ERROR_TEXT, SECURITY_HEADERS
from stillroom.webapp.settings import LANGUAGES

from support import NASTY, PASSPHRASE, AuthActions, LoopbackClient, every_rule_url, form_fields

PAGES = ["/", "/privacy", "/help", "/create", "/login"]
ACCOUNT_PAGES = ["/account", "/account/passphrase", "/account/delete"]


def test_every_route_sends_the_security_headers(app, client, auth: AuthActions):
    auth.create()
    urls = [*every_rule_url(app), "/xx/", "/en/nothing-here"]
    assert len(urls) > 40
    for url in urls:
        response = client.get(url)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (url, name)
        assert "Server" not in response.headers
        assert "script-src" not in response.headers["Content-Security-Policy"]
        if url.endswith(".css"):
            assert "immutable" in response.headers["Cache-Control"]
        else:
            assert response.headers["Cache-Control"] == "no-store", url
    post = auth.post("/logout", page="/")
    assert post.headers["Referrer-Policy"] == "no-referrer"


def visit_all(client, auth: AuthActions, lang: str) -> dict[str, str]:
    pages = {path: client.get(f"/{lang}{path}").get_data(as_text=True) for path in PAGES}
    auth.lang = lang
    auth.create()
    pages.update(
        {path: client.get(f"/{lang}{path}").get_data(as_text=True) for path in ACCOUNT_PAGES}
    )
    pages["404"] = client.get(f"/{lang}/no-such-page").get_data(as_text=True)
    auth.logout()
    return pages


@pytest.mark.parametrize("lang", LANGUAGES)
def test_pages_have_no_script_and_link_languages_and_help(client, auth, lang):
    for path, html in visit_all(client, auth, lang).items():
        assert "<script" not in html.lower(), path
        assert "<img" not in html.lower() and "@font-face" not in html, path
        assert f'<html lang="{lang}">' in html, path
        for other in LANGUAGES:
            assert f'hreflang="{other}"' in html, (path, other)
        assert f'href="/{lang}/help"' in html, path
        assert html.count('rel="stylesheet"') == 1
        assert "http://" not in html and "https://" not in html, "no clearnet links"


def test_root_offers_the_choice_of_languages(client):
    html = client.get("/").get_data(as_text=True)
    for lang in LANGUAGES:
        assert f'href="/{lang}/"' in html


def test_accept_language_is_never_read(client):
    html = client.get("/en/", headers={"Accept-Language": "de-DE,de;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in html
    assert "Accept-Language" not in client.get("/en/").headers.get("Vary", "")


def test_unknown_language_gets_a_404_with_language_links(client):
    response = client.get("/xx/login")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    for lang in LANGUAGES:
        assert f'href="/{lang}/"' in html


def test_error_pages_are_identical_for_existing_and_missing_things(client):
    a = client.get("/en/no-such-page").get_data()
    b = client.get("/en/account/nothing").get_data()
    assert a == b


def test_no_cookie_before_login(client):
    for path in PAGES:
        assert "Set-Cookie" not in client.get(f"/en{path}").headers


def test_oversized_body_gets_a_translated_413(client, settings):
    page = client.get("/de/login").get_data(as_text=True)
    body = {**form_fields(page), "passphrase": "x" * (settings.max_request_kib * 1024 + 10)}
    response = client.post("/de/login", data=body)
    assert response.status_code == 413
    assert '<html lang="de">' in response.get_data(as_text=True)
    assert "too long" not in response.get_data(as_text=True), "German, not English"


@pytest.mark.parametrize(
    "typed",
    ["x " * 150, "word\x00word", "word\u202eword", "\x1b[31mred", "1234 5678"],
)
def test_bad_passphrase_input_gets_a_calm_error(client, typed):
    page = client.get("/en/login").get_data(as_text=True)
    response = client.post("/en/login", data={**form_fields(page), "passphrase": typed})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'class="error"' in html


def test_invalid_utf8_gets_a_calm_error(client):
    page = client.get("/en/login").get_data(as_text=True)
    token = form_fields(page)["form_token"]
    body = f"form_token={token}&passphrase=".encode() + b"%ff%fe%c3"
    response = client.post("/en/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert 'class="error"' in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/create", "/login"])
def test_posts_without_a_valid_form_token_are_refused(client, path):
    assert client.post(f"/en{path}", data={"confirm": "x"}).status_code == 400
    forged = {"form_token": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    assert client.post(f"/en{path}", data=forged).status_code == 400


def test_cross_site_posts_are_refused(client, auth):
    passphrase = auth.create()
    auth.logout()
    page = client.get("/en/login").get_data(as_text=True)
    response = client.post(
        "/en/login",
        data={**form_fields(page), "passphrase": passphrase},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403


def test_form_token_from_before_login_does_not_work_after_it(client, auth):
    passphrase = auth.create()
    auth.logout()
    old_page = client.get("/en/create").get_data(as_text=True)
    auth.login(passphrase)
    response = client.post("/en/logout", data=form_fields(old_page))
    assert response.status_code == 400


def test_a_form_token_tells_nothing_about_the_servers_clock(client, clock):
    """Tokens polled across a minute's turn once placed the server's clock to a few ms."""
    clock.now = 1_800_000_000 - 0.5  # half a second before a minute turns
    before = [form_fields(client.get("/en/login").get_data(as_text=True))["form_token"]]
    clock.advance(1)
    after = [form_fields(client.get("/en/login").get_data(as_text=True))["form_token"]]
    raw = [base64.urlsafe_b64decode(token) for token in before + after]
    assert len({len(token) for token in raw}) == 1
    minutes = [int(clock() // 60) - 1, int(clock() // 60)]
    for token in raw:
        for minute in minutes:
            assert minute.to_bytes(4, "big") not in token, "the minute is not in clear"
    # Nothing in common but chance: no byte of the token stays put from one to the next.
    same = [a == b for a, b in zip(raw[0], raw[1], strict=True)]
    assert sum(same) < 8, same
    page = client.get("/en/login").get_data(as_text=True)
    fields = {**form_fields(page), "passphrase": "no such words here at all"}
    assert client.post("/en/login", data=fields).status_code == 401, "and it still works"
    clock.advance(9 * 3600)
    assert client.post("/en/login", data=fields).status_code == 400, "and still expires"


def test_tampered_pending_passphrase_is_refused_calmly(client, settings):
    page = client.get("/en/create").get_data(as_text=True)
    passphrase = PASSPHRASE.search(page).group(1)
    fields = form_fields(page)
    fields["pending"] = fields["pending"][:-4] + "AAA="
    response = client.post("/en/create", data={**fields, "confirm": passphrase})
    assert response.status_code == 400
    assert 'class="error"' in response.get_data(as_text=True)


def test_busy_argon2_gives_a_small_503_page(app, client):
    deriver = app.config["CREATION_KEY_DERIVER"]
    deriver.wait_seconds = 0
    page = client.get("/es/create").get_data(as_text=True)
    passphrase = PASSPHRASE.search(page).group(1)
    for _ in range(app.config["SETTINGS"].account_argon2_concurrency):
        deriver._slots.acquire()
    try:
        response = client.post("/es/create", data={**form_fields(page), "confirm": passphrase})
    finally:
        for _ in range(app.config["SETTINGS"].account_argon2_concurrency):
            deriver._slots.release()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert '<html lang="es">' in response.get_data(as_text=True)
    assert len(response.get_data()) < 4096


@pytest.mark.parametrize("value", NASTY)
def test_no_input_produces_a_500(client, auth: AuthActions, value):
    """Every form field, with a valid token so the views really run."""
    auth.create()
    for path in ["/account/passphrase", "/account/delete", "/logout"]:
        page = client.get(f"/en{path if path != '/logout' else '/account'}")
        fields = form_fields(page.get_data(as_text=True))
        bad = {"passphrase": value, "confirm": value, "current": value, "pending": value}
        if path != "/account/delete":  # deleting would end the test's account
            assert client.post(f"/en{path}", data={**fields, **bad}).status_code < 500, path
    for path in ["/create", "/login"]:
        fields = form_fields(client.get(f"/en{path}").get_data(as_text=True))
        bad = {"passphrase": value, "confirm": value, "current": value, "pending": value}
        assert client.post(f"/en{path}", data={**fields, **bad}).status_code < 500, path
        assert client.post(f"/en{path}", data={"form_token": value}).status_code == 400
    assert client.get(f"/en/{value}").status_code < 500
    assert not re.search("Traceback", client.get("/en/%ff").get_data(as_text=True))


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_an_unexpected_failure_is_logged_by_its_type_and_place_only(chat, caplog, monkeypatch):
    """The log names what broke and where in our code: not the address, not the values."""

    def broken(*_args: object) -> None:
        raise sqlite3.DatabaseError(f"malformed near {chat.id}")

    monkeypatch.setattr("stillroom.webapp.participant.chat.appointment_for", broken)
    response = chat.auth.client.get(f"/en/chat/{chat.id}")
    assert response.status_code == 500
    [record] = errors_logged(caplog)
    line = record.getMessage()
    assert line.startswith("unhandled DatabaseError at stillroom.webapp.participant.chat:")
    assert chat.id not in line and "/chat" not in line and "malformed" not in line
    assert record.exc_info is None and "/" not in line


@pytest.mark.parametrize("area", ["participant", "portal"])
def test_flasks_own_exception_log_names_no_address(request, caplog, area):
    """When even the error page fails, Flask's own log line is ours too: no path, no id,
    no traceback; the visitor still gets the generic page."""
    app = request.getfixturevalue("app" if area == "participant" else "portal_app")
    appointment = "f0e1d2c3b4a5968778695a4b3c2d1e0f"

    def failing_view(**_values: str) -> None:
        raise KeyError(appointment)

    def failing_page(_error: Exception) -> None:
        raise OSError(errno.EMFILE, "Too many open files", f"/en/chat/{appointment}")

    app.view_functions[f"{area}.chat_feed"] = failing_view
    app.register_error_handler(Exception, failing_page)
    response = app.test_client().get(f"/en/chat/{appointment}/feed?seen={appointment}")
    assert response.status_code == 500
    assert str(ERROR_TEXT[500]) in response.get_data(as_text=True)
    records = errors_logged(caplog)
    assert [record.getMessage().split(" ", 2)[:2] for record in records] == [
        ["unhandled", "OSError"]
    ]
    for record in records:
        assert appointment not in record.getMessage() and "/en/" not in record.getMessage()
        assert record.exc_info is None


def test_the_error_page_needs_no_file_once_the_app_has_started(client, monkeypatch):
    """Out of file descriptors, a request still gets the calm error page in its language:
    its templates and every language's translations were loaded at startup."""

    def out_of_files(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(client.application.jinja_env.loader, "get_source", out_of_files)
    monkeypatch.setattr("builtins.open", out_of_files)
    for lang in LANGUAGES:
        response = client.get(f"/{lang}/nothing-here")
        assert response.status_code == 404
        assert f'<html lang="{lang}">' in response.get_data(as_text=True)
    german = client.get("/de/nothing-here").get_data(as_text=True)
    assert "There is no page at this address." not in german


def test_when_every_database_connection_is_lent_a_request_gets_the_busy_page(
    settings, clock, monkeypatch
):
    """The connections lent at once are bounded; a request that finds none free within
    the wait gets the small 503 page, and the next one, once one is back, its page."""
    monkeypatch.setattr(db, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(db, "WAIT_SECONDS", 0.1)
    app = create_participant_app(settings, clock=clock)
    app.test_client_class = LoopbackClient
    client = app.test_client()
    AuthActions(client).create()
    lent = app.extensions["stillroom_db_lent"]
    for _ in range(db.MAX_CONNECTIONS):  # as other requests, each holding a connection
        lent.acquire()
    try:
        busy = client.get("/de/account")
    finally:
        for _ in range(db.MAX_CONNECTIONS):
            lent.release()
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    page = busy.get_data(as_text=True)
    assert '<html lang="de">' in page and len(busy.get_data()) < 4096
    with app.test_request_context("/de/"):
        assert str(ERROR_TEXT[503]) in page
    assert client.get("/de/account").status_code == 200


def test_error_pages_and_redirects_carry_the_headers(app, client, auth: AuthActions):
    responses = {
        "400": client.post("/en/login", data={"form_token": "x"}),
        "404": client.get("/en/none"),
        "405": client.get("/en/logout"),
        "421": client.get("/en/", headers={"Host": "evil.example"}),
        "413": client.post("/en/login", data={"passphrase": "x" * 300 * 1024}),
        "redirect": client.get("/en/account"),
    }
    deriver = app.config["CREATION_KEY_DERIVER"]
    deriver.wait_seconds = 0
    page = client.get("/en/create").get_data(as_text=True)
    for _ in range(app.config["SETTINGS"].account_argon2_concurrency):
        deriver._slots.acquire()
    responses["503"] = client.post(
        "/en/create",
        data={**form_fields(page), "confirm": PASSPHRASE.search(page).group(1)},
    )
    for name, response in responses.items():
        assert str(response.status_code) == name or name == "redirect", name
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        assert response.headers["Cache-Control"] == "no-store", name


def test_posts_without_fetch_metadata_are_accepted(client, auth):
    """Older browsers send no Sec-Fetch-Site; the form token still guards them."""
    passphrase = auth.create()
    auth.logout()
    page = client.get("/en/login").get_data(as_text=True)
    response = client.post("/en/login", data={**form_fields(page), "passphrase": passphrase})
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("opened", "sent", "done"),
    [
        ("/account", "/logout", "logged-out"),  # nothing left to end: just confirm
        ("/account/delete", "/account/delete", "session-ended"),
    ],
)
def test_a_form_whose_session_timed_out_is_answered_calmly(
    client, auth, clock, settings, opened, sent, done
):
    auth.create()
    page = client.get(f"/en{opened}").get_data(as_text=True)
    clock.advance(settings.idle_timeout_minutes * 60 + 1)
    response = client.post(f"/en{sent}", data=form_fields(page))
    assert response.status_code == 302
    assert f"done={done}" in response.headers["Location"]
    assert client.get_cookie("stillroom", domain="127.0.0.1") is None


@pytest.mark.parametrize("host", ["evil.example", "localhost", "127.0.0.2", "abc.onion"])
def test_other_hosts_are_refused(client, host):
    response = client.get("/en/", headers={"Host": host})
    assert response.status_code == 421


def test_tor2web_gets_an_explanation(client):
    response = client.get("/de/", headers={"X-Tor2web": "1"})
    assert response.status_code == 403
    assert "Tor2web" in response.get_data(as_text=True)
    assert '<html lang="de">' in response.get_data(as_text=True)


def test_own_onion_address_is_served(app, client):
    address = "a" * 56 + ".onion"
    app.config["ONION_ADDRESS"] = address
    assert client.get("/en/", headers={"Host": address}).status_code == 200
    assert client.get("/en/", headers={"Host": "b" * 56 + ".onion"}).status_code == 421


def test_a_login_form_sent_after_logging_in_elsewhere_goes_to_the_account(client, auth):
    passphrase = auth.create()
    auth.logout()
    stale = client.get("/en/login").get_data(as_text=True)
    auth.login(passphrase)
    response = client.post("/en/login", data={**form_fields(stale), "passphrase": passphrase})
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/en/account")
