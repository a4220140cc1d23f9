"""The production server against clients that are slow on purpose, on a real ``stillroom serve``.

A request's body is read whole, within a deadline, before the app runs: a client that
never finishes its body ties up neither a database connection nor the connection for
long, and everyone else is answered meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import psutil
import pytest
from loadclients import Chat, create_chats, log_in

from stillroom.webapp.server import FIRST_REQUEST_SECONDS, NEXT_REQUEST_SECONDS, REQUEST_SECONDS
from stillroom.webapp.settings import Settings

from support import LiveServer, start_server, stillroom_env, stop_server

#: A form that says it sends 4,000 bytes and sends 12.
STALLED_BODY = "Content-Length: 4000\r\n\r\nform_token=x"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Chat]]:
    """A real server with one booked chat whose participant is logged in."""
    data_dir = tmp_path_factory.mktemp("server") / "instance"
    extra = {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120", "STILLROOM_FEED_HOLD_SECONDS": "0"}
    [chat] = create_chats(1, Settings.load(stillroom_env(data_dir, 0, extra)))
    server = start_server(data_dir, extra)
    asyncio.run(log_in(chat, port_of(server.url), port_of(server.portal_url)))
    yield server, chat
    stop_server(server)


def database_files(server: LiveServer) -> int:
    """Return how many files of the database the server process holds open."""
    files = psutil.Process(server.process.pid).open_files()
    return sum("stillroom.db" in item.path for item in files)


def server_end_of(server: LiveServer, client: tuple[str, int]) -> str | None:
    """Return the state of the server's end of the connection from ``client``, if any."""
    for connection in psutil.Process(server.process.pid).net_connections(kind="tcp"):
        if connection.raddr and connection.raddr.port == client[1]:
            return str(connection.status)
    return None


def stalled_post(server: LiveServer, path: str, cookie: str = "") -> socket.socket:
    """Send a POST's head and the start of its body, and nothing more."""
    client = socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5)
    client.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: same-origin\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + "Content-Type: application/x-www-form-urlencoded\r\n"
            + STALLED_BODY
        ).encode()
    )
    return client


def answer_within(client: socket.socket, seconds: float) -> bytes:
    """Return everything the server sends until it closes the connection."""
    client.settimeout(seconds)
    received = b""
    while chunk := client.recv(4096):
        received += chunk
    return received


def test_a_post_whose_body_never_comes_is_dropped_and_pins_nothing(served):
    """Stalled POSTs (logged in or not) hold no database file while they wait, the
    server answers others at once meanwhile, and each is answered 408 and closed
    once the body's deadline has passed."""
    server, chat = served
    before = database_files(server)
    stalled = [
        stalled_post(server, f"/en/chat/{chat.appointment}/compose", chat.participant_cookie)
        for _ in range(20)
    ] + [stalled_post(server, "/en/login") for _ in range(20)]
    started = time.monotonic()
    try:
        time.sleep(1)
        assert database_files(server) <= before + 2, "a stalled body holds a database connection"
        for _ in range(5):
            asked = time.monotonic()
            with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as other:
                other.sendall(b"GET /en/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert answer_within(other, 5).startswith(b"HTTP/1.1 200")
            assert time.monotonic() - asked < 1
        answers = [answer_within(client, REQUEST_SECONDS + 5) for client in stalled]
        waited = time.monotonic() - started
        assert {answer.split(b"\r\n", 1)[0] for answer in answers} == {
            b"HTTP/1.1 408 Request Timeout"
        }
        assert REQUEST_SECONDS - 1 <= waited <= REQUEST_SECONDS + 5, waited
        ends = [client.getsockname() for client in stalled]
        for client in stalled:
            client.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(server_end_of(server, end) for end in ends):
            time.sleep(0.1)
        assert not any(server_end_of(server, end) for end in ends), "a connection is still held"
    finally:
        for client in stalled:
            client.close()
    assert "Traceback" not in server.output()
    assert "Error" not in server.output()


def test_a_slow_but_whole_body_is_answered_as_usual(served):
    """A body that arrives in pieces, within the deadline, reaches the app whole."""
    server, _ = served
    body = b"form_token=x&passphrase=" + b"word+" * 10
    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=10) as client:
        client.sendall(
            b"POST /en/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 20):
            time.sleep(0.3)
            client.sendall(body[start : start + 20])
        answer = answer_within(client, 10)
    # The app read the whole form: its token is refused (400), not the request cut short.
    assert answer.startswith(b"HTTP/1.1 400"), answer[:40]
    assert b"</html>" in answer


@pytest.mark.parametrize(
    ("chunks", "status"), [([b"form_token=x"], b"400"), ([b"a" * 16384] * 3, b"413")]
)
def test_a_chunked_body_is_read_whole_and_refused_over_the_limit(served, chunks, status):
    """``Transfer-Encoding: chunked`` (no browser form sends it) reaches the app whole,
    and one longer than the limit gets the app's 413."""
    server, _ = served
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=10) as client:
        client.sendall(
            b"POST /en/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body
        )
        answer = answer_within(client, 10)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:40]
    assert b"</html>" in answer


def test_a_body_over_the_limit_is_refused_without_being_read(served):
    """A body larger than accepted gets the app's 413 at once, and the connection closes."""
    server, _ = served
    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=10) as client:
        client.sendall(
            b"POST /en/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100000000\r\n\r\nform_token=x"
        )
        asked = time.monotonic()
        answer = answer_within(client, 5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:40]
    assert time.monotonic() - asked < 2


def test_a_silent_connection_is_closed_sooner_than_a_kept_alive_one(served):
    """A new connection that says nothing is closed after ``FIRST_REQUEST_SECONDS``; one
    that was answered waits ``NEXT_REQUEST_SECONDS`` for its next request, longer than
    the longest pause a page asks for (30 s), and is closed after it."""
    server, _ = served
    port = port_of(server.url)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as silent,
        socket.create_connection(("127.0.0.1", port), timeout=5) as kept,
    ):
        kept.sendall(b"GET /en/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"</html>" not in head:
            head += kept.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        silent.settimeout(FIRST_REQUEST_SECONDS + 3)
        assert silent.recv(1) == b""
        assert FIRST_REQUEST_SECONDS - 1 <= time.monotonic() - answered <= FIRST_REQUEST_SECONDS + 2
        time.sleep(2)
        assert server_end_of(server, kept.getsockname()) == psutil.CONN_ESTABLISHED
        kept.settimeout(NEXT_REQUEST_SECONDS)
        assert kept.recv(1) == b""
        waited = time.monotonic() - answered
        assert NEXT_REQUEST_SECONDS - 1 <= waited <= NEXT_REQUEST_SECONDS + 2, waited


def test_a_burst_of_new_connections_waits_to_be_accepted_instead_of_being_dropped(served):
    """1,000 browsers opening the chat at once, or coming back after a restart: while the
    server is busy, their connections wait in its queue. With gevent's default queue (128)
    the kernel dropped the rest, and each of those browsers waited 1 to 3 s to try again."""
    import select
    import signal

    server, _ = served
    burst = 400
    clients = []
    os.kill(server.process.pid, signal.SIGSTOP)  # busy: accepts nothing for a moment
    try:
        for _ in range(burst):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port_of(server.url)))
            clients.append(client)
        connected = 0
        deadline = time.monotonic() + 0.8  # less than the 1 s before a dropped one tries again
        waiting = list(clients)
        while waiting and time.monotonic() < deadline:
            _, writable, _ = select.select([], waiting, [], 0.1)
            for client in writable:
                waiting.remove(client)
                connected += client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        for client in clients:
            client.close()
    assert connected == burst
