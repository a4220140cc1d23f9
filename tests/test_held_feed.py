"""Without JavaScript a feed reload that finds nothing new is held until news, on the real server.

Each test talks HTTP to ``stillroom serve --no-tor`` with pairs booked before it started
(``loadclients``), as a browser would: a first load of the feed, then reloads that
bring the ETag back in ``If-None-Match``.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from loadclients import Chat, create_chats, form_token, log_in

from stillroom.webapp.settings import Settings

from support import LiveServer, start_server, stillroom_env, stop_server

#: The hold of the shared server: long enough to tell a held answer from a quick one.
HOLD = 3
REFRESH = re.compile(
    rb'<meta http-equiv="refresh" content="(\d+)(?:; url=\?(?:seen|first)=([\w-]+))?">'
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def book_and_serve(
    data_dir: Path, extra: dict[str, str], pairs: int, vectors: Path | None = None
) -> tuple[LiveServer, list[Chat]]:
    """Book ``pairs`` chats that are open now and start the server with ``extra`` settings
    (and cached ``vectors`` for therapist support, if given); nobody is logged in yet."""
    extra = {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120", **extra}
    chats = create_chats(pairs, Settings.load(stillroom_env(data_dir, 0, extra)))
    return start_server(data_dir, extra, vectors), chats


def serve(data_dir: Path, hold: int, pairs: int) -> tuple[LiveServer, list[Chat]]:
    """Book ``pairs`` chats that are open now, start the server, and log both sides in."""
    server, chats = book_and_serve(data_dir, {"STILLROOM_FEED_HOLD_SECONDS": str(hold)}, pairs)
    for chat in chats:
        asyncio.run(log_in(chat, port_of(server.url), port_of(server.portal_url)))
    return server, chats


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, list[Chat]]]:
    """One server holding reloads for :data:`HOLD` seconds, and chats for each test."""
    server, chats = serve(tmp_path_factory.mktemp("held") / "instance", HOLD, pairs=7)
    yield server, chats
    stop_server(server)


def bare(etag: str) -> str:
    """Return an ETag header's value without its quotes, as the refresh URL carries it."""
    return etag.strip('"')


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get(url: str, path: str, cookie: str, etag: str = "", timeout: float = 30) -> Answer:
    """Fetch ``path`` on a connection of its own and time the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=timeout)
    headers = {"Cookie": cookie, **({"If-None-Match": etag} if etag else {})}
    started = time.monotonic()
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    seconds = time.monotonic() - started
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body, seconds)


def feed(server: LiveServer, chat: Chat, side: str = "participant", etag: str = "") -> Answer:
    """Load one side's feed frame, or reload it when ``etag`` is the feed it shows."""
    url, cookie = (
        (server.url, chat.participant_cookie)
        if side == "participant"
        else (server.portal_url, chat.therapist_cookie)
    )
    if not etag:
        return get(url, f"/en/chat/{chat.appointment}/feed", cookie)
    # As the frame's refresh asks; only a participant's browser keeps the feed to revalidate.
    path = f"/en/chat/{chat.appointment}/feed?seen={bare(etag)}"
    return get(url, path, cookie, etag if side == "participant" else "")


def write(server: LiveServer, chat: Chat, text: str, side: str = "therapist") -> None:
    """Send a message from one side through its compose frame."""
    url, cookie = (
        (server.portal_url, chat.therapist_cookie)
        if side == "therapist"
        else (server.url, chat.participant_cookie)
    )
    post(url, f"/en/chat/{chat.appointment}/compose", cookie, {"text": text})


def post(url: str, path: str, cookie: str, fields: dict[str, str]) -> None:
    """Submit the form of ``path`` with ``fields``, as its page would; expect no error."""
    token = form_token(get(url, path, cookie).body)
    connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=10)
    try:
        body = urllib.parse.urlencode({"form_token": token, **fields})
        headers = {
            "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded",
            "Sec-Fetch-Site": "same-origin",
        }
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 302), response.status
    finally:
        connection.close()


def in_background(call) -> tuple[threading.Thread, list[Answer]]:  # type: ignore[no-untyped-def]
    """Run ``call`` in a thread; its answer lands in the returned list."""
    answers: list[Answer] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def server_end(server: LiveServer, client: socket.socket) -> str | None:
    """Return the state of the server's end of ``client``'s connection, ``None`` once closed.

    A connection whose client left while the server still holds its request stays in
    ``CLOSE_WAIT``; once the server lets go of the request, it is gone.
    """
    return server_end_of(server, client.getsockname())


def server_end_of(server: LiveServer, client: tuple[str, int]) -> str | None:
    """Return the state of the server's end of the connection from ``client``'s address."""
    for connection in psutil.Process(server.process.pid).net_connections(kind="tcp"):
        if connection.raddr and connection.raddr.port == client[1]:
            return str(connection.status)
    return None


def test_an_idle_reload_is_held_then_answered_304(held):
    """Nothing new: the reload waits the hold time, then says "not modified"; the next
    reload follows at once (a delay of 0, which is a redirect, not a time limit)."""
    server, chats = held
    first = feed(server, chats[0])
    assert first.status == 200
    refresh = REFRESH.search(first.body)
    assert refresh is not None and refresh.group(1) == b"0"
    assert refresh.group(2).decode() == bare(first.headers["etag"])
    assert b"url=?first=" in first.body  # the reload after an opening is held only briefly
    again = feed(server, chats[0], etag=first.headers["etag"])
    assert again.status == 304
    assert HOLD - 0.2 <= again.seconds <= HOLD + 1.5, again.seconds


def test_opening_the_chat_again_shows_the_feed_at_once(held):
    """The page's own load of the frame (not one of its reloads) is never held, even when
    the browser kept the feed and asks with its ETag."""
    server, chats = held
    etag = feed(server, chats[0]).headers["etag"]
    again = get(
        server.url, f"/en/chat/{chats[0].appointment}/feed", chats[0].participant_cookie, etag
    )
    assert again.status == 304 and again.seconds < 0.5


def test_news_answers_a_held_reload_at_once(held):
    """A message from the therapist ends the participant's held reload with the new feed."""
    server, chats = held
    chat = chats[1]
    etag = feed(server, chat).headers["etag"]
    thread, answers = in_background(lambda: feed(server, chat, etag=etag))
    time.sleep(0.5)  # the reload is held by now
    write(server, chat, "Good evening, I am here now.")
    written = time.monotonic()
    thread.join(HOLD + 2)
    [answer] = answers
    assert answer.status == 200
    assert b"Good evening, I am here now." in answer.body
    assert time.monotonic() - written < 0.5
    assert answer.seconds < HOLD - 1, "answered on the news, not at the end of the hold"


def test_the_portal_feed_is_held_too(held):
    """Therapists without JavaScript get the same: the participant's message ends the hold."""
    server, chats = held
    chat = chats[2]
    etag = feed(server, chat, side="therapist").headers["etag"]
    thread, answers = in_background(lambda: feed(server, chat, side="therapist", etag=etag))
    time.sleep(0.5)
    write(server, chat, "Hello, it is me.", side="participant")
    thread.join(HOLD + 2)
    [answer] = answers
    assert answer.status == 200 and b"Hello, it is me." in answer.body
    assert answer.seconds < HOLD - 1


def test_a_client_that_leaves_frees_its_held_reload(held):
    """The server lets go of a held reload as soon as its browser closes the connection."""
    server, chats = held
    chat = chats[3]
    etag = feed(server, chat).headers["etag"]
    client = socket.create_connection(("127.0.0.1", port_of(server.url)))
    client.sendall(
        f"GET /en/chat/{chat.appointment}/feed?seen={bare(etag)} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Cookie: {chat.participant_cookie}\r\nIf-None-Match: {etag}\r\n\r\n".encode()
    )
    time.sleep(0.5)
    assert server_end(server, client) == psutil.CONN_ESTABLISHED, "held"
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)  # no answer yet: the reload is held
    client_port = client.getsockname()
    client.close()
    left = time.monotonic()
    while time.monotonic() - left < 1 and server_end_of(server, client_port) is not None:
        time.sleep(0.05)
    assert server_end_of(server, client_port) is None, "the held reload is still there"


def test_a_session_that_ends_while_held_gets_the_ended_answer(held):
    """A logout elsewhere during the hold: the reload then answers as any reload would."""
    server, chats = held
    chat = chats[4]
    etag = feed(server, chat).headers["etag"]
    thread, answers = in_background(lambda: feed(server, chat, etag=etag))
    time.sleep(0.5)
    page = get(server.url, "/en/account", chat.participant_cookie).body
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server.url), timeout=10)
    connection.request(
        "POST",
        "/en/logout",
        body=urllib.parse.urlencode({"form_token": form_token(page)}),
        headers={
            "Cookie": chat.participant_cookie,
            "Content-Type": "application/x-www-form-urlencoded",
            "Sec-Fetch-Site": "same-origin",
        },
    )
    assert connection.getresponse().status in (200, 302)
    connection.close()
    thread.join(HOLD + 2)
    [answer] = answers
    after = feed(server, chat, etag=etag)  # what a reload of the ended session gets today
    assert (answer.status, answer.headers.get("location")) == (
        after.status,
        after.headers.get("location"),
    )
    assert answer.status == 302 and "session-ended" in answer.headers["location"]


def test_a_cut_held_reload_leaves_a_working_feed(held):
    """A proxy or client that gives up before the hold ends: the next reload still works."""
    server, chats = held
    chat = chats[5]
    etag = feed(server, chat).headers["etag"]
    with pytest.raises(TimeoutError):
        path = f"/en/chat/{chat.appointment}/feed?seen={bare(etag)}"
        get(server.url, path, chat.participant_cookie, etag, timeout=1)
    thread, answers = in_background(lambda: feed(server, chat, etag=etag))
    time.sleep(0.3)
    write(server, chat, "Still here.")
    thread.join(HOLD + 2)
    [answer] = answers
    assert answer.status == 200 and b"Still here." in answer.body


def test_one_login_holds_only_a_few_reloads_the_next_reloads_on_a_timer(tmp_path):
    """A flood of held reloads under one login cannot take the server's connections:
    beyond a few, a reload is answered at once with a page that reloads on a timer."""
    server, [chat] = serve(tmp_path / "instance", 30, pairs=1)
    try:
        etag = feed(server, chat).headers["etag"]
        holding = [in_background(lambda: feed(server, chat, etag=etag)) for _ in range(4)]
        time.sleep(0.5)
        beyond = feed(server, chat, etag=etag)
        assert beyond.status == 200 and beyond.seconds < 1, beyond
        refresh = REFRESH.search(beyond.body)
        assert refresh is not None and int(refresh.group(1)) >= 5 and refresh.group(2) is None
        assert all(thread.is_alive() for thread, _ in holding), "the first four are held"
        # Another person's reload is still held: the cap is per login.
        write(server, chat, "Here.")
        assert feed(server, chat, "therapist").status == 200
    finally:
        stop_server(server)


def test_the_portal_s_held_reloads_leave_the_participants_room_to_hold(tmp_path):
    """Each app holds reloads up to half of its own server's connections: therapists
    holding theirs (feeds, support panels) never put a participant's feed on a timer."""
    settings = {"STILLROOM_FEED_HOLD_SECONDS": "30", "STILLROOM_SERVER_CONNECTIONS": "10"}
    server, [chat, other] = book_and_serve(tmp_path / "instance", settings, 2)
    try:
        holding = []
        for pair, reloads in ((chat, 3), (other, 2)):  # all the portal's room: 10 // 2
            asyncio.run(log_in(pair, port_of(server.url), port_of(server.portal_url)))
            etag = feed(server, pair, "therapist").headers["etag"]
            holding += [
                in_background(lambda p=pair, e=etag: feed(server, p, "therapist", e))
                for _ in range(reloads)
            ]
        time.sleep(0.5)
        assert all(thread.is_alive() for thread, _ in holding)
        mine = feed(server, chat).headers["etag"]
        participant, answers = in_background(lambda: feed(server, chat, etag=mine))
        time.sleep(1)
        assert participant.is_alive(), answers  # held, not sent back to reload on a timer
        write(server, chat, "Here.")
        participant.join(5)
        [answer] = answers
        assert answer.status == 200 and b"Here." in answer.body and answer.seconds < 3
    finally:
        stop_server(server)


def test_the_reload_after_an_opening_is_held_only_briefly(tmp_path):
    """The page that opens the chat names its reload ``first``: held a few seconds at most
    (the browser keeps the whole page loading while a frame's reload is pending before
    the page has loaded), then answered with the feed whose own reload is held in full."""
    server, [chat] = serve(tmp_path / "instance", 30, pairs=1)
    try:
        opening = feed(server, chat)
        refresh = REFRESH.search(opening.body)
        assert refresh is not None and b"url=?first=" in opening.body
        path = f"/en/chat/{chat.appointment}/feed?first={refresh.group(2).decode()}"
        after = get(server.url, path, chat.participant_cookie)
        assert after.status == 200 and 2.5 <= after.seconds <= 4, after.seconds
        assert b"url=?seen=" in after.body
    finally:
        stop_server(server)


def test_a_deleted_conversation_leaves_every_held_feed_at_once(held):
    """The participant deletes the conversation: both sides' held feeds answer at once
    without it, and no reload is told its copy is still current."""
    server, chats = held
    chat = chats[6]
    write(server, chat, "A message to delete.")
    etags = [feed(server, chat, side).headers["etag"] for side in ("participant", "therapist")]
    reloads = [
        in_background(lambda side=side, etag=etag: feed(server, chat, side, etag))
        for side, etag in zip(("participant", "therapist"), etags, strict=True)
    ]
    time.sleep(0.5)
    deleted = time.monotonic()
    post(server.url, f"/en/chat/{chat.appointment}/delete", chat.participant_cookie, {})
    for thread, _ in reloads:
        thread.join(HOLD + 5)
    for _, [answer] in reloads:
        assert answer.status == 200 and b"A message to delete." not in answer.body
        assert answer.seconds < HOLD - 1, "answered at the deletion, not at the hold's end"
    assert time.monotonic() - deleted < 1
    again = feed(server, chat, etag=etags[0])
    assert again.status == 200 and b"A message to delete." not in again.body


def test_shutdown_answers_held_reloads_304(tmp_path):
    """SIGTERM: every held reload is answered before the process ends ("not modified" where
    the browser kept the feed)."""
    server, [chat] = serve(tmp_path / "instance", 30, pairs=1)
    try:
        etags = [feed(server, chat, side).headers["etag"] for side in ("participant", "therapist")]
        reloads = [
            in_background(lambda side=side, etag=etag: feed(server, chat, side, etag))
            for side, etag in zip(("participant", "therapist"), etags, strict=True)
        ]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        for thread, _ in reloads:
            thread.join(5)
        # The participant's browser kept the feed; the portal's feed is never kept.
        assert [answers[0].status for _, answers in reloads] == [304, 200]
        # The next reload, which follows at once, must reach the next server, not this one.
        assert [answers[0].headers["connection"] for _, answers in reloads] == ["close"] * 2
        assert time.monotonic() - stopping < 2
        assert server.process.wait(10) == 0
    finally:
        stop_server(server)


def test_with_holding_off_reloads_answer_at_once(tmp_path):
    """``STILLROOM_FEED_HOLD_SECONDS=0``: a reload is answered at once, every 10 s when idle."""
    server, [chat] = serve(tmp_path / "instance", 0, pairs=1)
    try:
        first = feed(server, chat)
        refresh = REFRESH.search(first.body)
        assert refresh is not None and refresh.group(1) == b"10" and refresh.group(2) is None
        again = feed(server, chat, etag=first.headers["etag"])
        assert again.status == 304 and again.seconds < 0.5
    finally:
        stop_server(server)


@pytest.mark.parametrize("side", ["participant", "therapist"])
def test_the_live_and_paused_feeds_are_never_held(held, side):
    """The live script's reload and a paused feed's "Check" are answered at once, even
    when they name the feed they show, and carry no refresh of their own."""
    server, chats = held
    chat = chats[0]
    url, cookie = (
        (server.url, chat.participant_cookie)
        if side == "participant"
        else (server.portal_url, chat.therapist_cookie)
    )
    for query in ("live=1", "pause=1"):
        path = f"/en/chat/{chat.appointment}/feed?{query}"
        first = get(url, path, cookie)
        assert first.status == 200 and REFRESH.search(first.body) is None, query
        etag = first.headers["etag"]
        again = get(url, f"{path}&seen={bare(etag)}", cookie, etag if side == "participant" else "")
        assert again.status == (304 if side == "participant" else 200), query
        assert again.seconds < 0.5, f"{query} was held"
