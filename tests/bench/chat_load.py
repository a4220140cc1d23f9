"""How many chats one server carries on this machine, with what latency and memory.

Starts ``stillroom serve --no-tor`` (the production server) on 127.0.0.1 and keeps,
all at once:

* ``--nojs`` participants without JavaScript, each on its own keep-alive connection,
  reloading the chat feed every ``--interval`` seconds with ``If-None-Match`` (as Tor
  Browser does with the meta refresh) and sending a message every ``--talk`` seconds;
* ``--ws`` participants with JavaScript, each holding the chat's WebSocket; their
  therapists write to them every ``--ws-talk`` seconds, and a delivery is timed from
  the moment the therapist's message is sent until the participant holds the feed
  page that shows it (the "news" on the socket, then the feed reload it triggers);
* the therapists of the no-JS chats writing back every ``--talk`` seconds.

Every chat is its own participant-therapist pair with an appointment that is open now.
Accounts are made in this process before the server starts and use the test suite's
argon2 costs, so that setting up thousands takes seconds; the measured minute runs no
argon2 at all. Latency is measured from this process, after a warm-up of one interval.

Prints the figures and, last,
``nojs_clients=N nojs_p99_ms=X ws_clients=N ws_p99_ms=X rss_mb=X``
(``rss_mb`` is the server's peak resident memory, VmHWM).

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import os
import random
import re
import resource
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.py
import pyotp
from websockets.asyncio.client import connect as websocket

from stillroom.crypto.kdf import FAST_FOR_TESTS
from stillroom.crypto.passphrase import generate_passphrase
from stillroom.webapp import accounts, booking, therapists
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

from support import FORM_TOKEN, GOOD_PASSWORD, argon2_env, start_server, stop_server

#: A request unanswered for this long fails the run (a full server must not hang it).
REQUEST_TIMEOUT = 30
TEXT = "Thank you. I would like to talk about how the week went, if that is all right."


@dataclass
class Chat:
    """One participant-therapist pair with an open appointment."""

    appointment: str
    passphrase: str
    login_name: str
    totp_secret: str
    enrolled_at: int
    participant_cookie: str = ""
    therapist_cookie: str = ""
    participant_token: str = ""
    therapist_token: str = ""


@dataclass
class Figures:
    """Latencies in milliseconds, kept only inside the measured window."""

    nojs: list[float] = field(default_factory=list)
    posts: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    news: list[float] = field(default_factory=list)
    errors: int = 0
    sockets: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    started: float = float("inf")
    ends: float = float("inf")

    def measuring(self) -> bool:
        """Whether now lies inside the measured window."""
        return self.started <= time.monotonic() < self.ends

    def running(self) -> bool:
        """Whether the load goes on (a second past the window, so that it ends loaded)."""
        return time.monotonic() < self.ends + 1


def create_chats(count: int, data_dir: Path) -> list[Chat]:
    """Make ``count`` therapists and participants and book each pair a time open now."""
    settings = Settings.load()
    app = create_participant_app(settings)  # prepares the instance; lends its keys
    deriver, lookup_key = app.config["KEY_DERIVER"], app.config["LOOKUP_KEY"]
    totp_key = app.config["TOTP_KEY"]
    db = connect(settings.database_path)
    now = int(time.time())
    start = (now // 60 + 70) * 60  # bookable (an hour ahead); its chat opens 120 min before
    chats = []
    for number in range(count):
        enrolment = therapists.add_therapist(
            db, f"Therapist {number}", ("en",), "Europe/Berlin", now
        )
        secret = pyotp.random_base32()
        therapist_id, _ = therapists.enrol(
            db,
            deriver,
            totp_key,
            enrolment.token,
            GOOD_PASSWORD,
            secret,
            pyotp.TOTP(secret).at(now),
            now,
        )
        (slot,) = booking.publish_slots(db, therapist_id, [start], 50, ("en",), ("en",), now)
        passphrase = generate_passphrase("en")
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
        account = accounts.create_account(db, deriver, lookup_key, passphrase, today)
        appointment = booking.book(db, account.participant_id, slot, "en", now, 1, 0)
        chats.append(Chat(appointment, passphrase, enrolment.login_name, secret, now))
    db.close()
    return chats


class Connection:
    """One keep-alive HTTP/1.1 connection, as a browser holds it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        cookie: str = "",
        form: dict[str, str] | None = None,
        etag: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read the whole answer; reconnect if the server closed."""
        body = urllib.parse.urlencode(form).encode() if form is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        head += ["Sec-Fetch-Site: same-origin", "Accept-Encoding: gzip, deflate"]
        if cookie:
            head.append(f"Cookie: {cookie}")
        if etag:
            head.append(f"If-None-Match: {etag}")
        if form is not None:
            head.append("Content-Type: application/x-www-form-urlencoded")
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        return await asyncio.wait_for(self._exchange(raw), REQUEST_TIMEOUT)

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            try:
                self.writer.write(raw)
                answer = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.writer = None
                if attempt:
                    raise
                continue
            lines = answer.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers.setdefault(name.strip().lower(), value.strip())
            length = int(headers.get("content-length", "0"))
            content = await self.reader.readexactly(length) if length else b""
            if headers.get("content-encoding") == "gzip":
                content = gzip.decompress(content)
            if headers.get("connection", "").lower() == "close":
                self.writer.close()
                self.writer = None
            return int(lines[0].split(" ", 2)[1]), headers, content
        raise AssertionError("unreachable")


def session_cookie(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


def form_token(content: bytes) -> str:
    match = FORM_TOKEN.search(content.decode())
    assert match is not None, content[:300]
    return match.group(1)


async def log_in(chat: Chat, participant_port: int, portal_port: int) -> None:
    """Log both sides of ``chat`` in through the real forms; keep cookies and form tokens."""
    door = Connection(participant_port)
    _, _, page = await door.request("GET", "/en/login")
    status, headers, _ = await door.request(
        "POST", "/en/login", form={"form_token": form_token(page), "passphrase": chat.passphrase}
    )
    assert status == 302, status
    chat.participant_cookie = session_cookie(headers)
    _, _, page = await door.request(
        "GET", f"/en/chat/{chat.appointment}/compose", chat.participant_cookie
    )
    chat.participant_token = form_token(page)
    portal = Connection(portal_port)
    _, _, page = await portal.request("GET", "/en/login")
    code = pyotp.TOTP(chat.totp_secret).at(max(time.time(), chat.enrolled_at + 30))
    status, headers, _ = await portal.request(
        "POST",
        "/en/login",
        form={
            "form_token": form_token(page),
            "name": chat.login_name,
            "password": GOOD_PASSWORD,
            "code": code,
        },
    )
    assert status == 302, status
    chat.therapist_cookie = session_cookie(headers)
    _, _, page = await portal.request(
        "GET", f"/en/chat/{chat.appointment}/compose", chat.therapist_cookie
    )
    chat.therapist_token = form_token(page)
    for connection in (door, portal):
        if connection.writer is not None:
            connection.writer.close()


async def log_in_all(chats: list[Chat], participant_port: int, portal_port: int) -> None:
    """Log every pair in, a few at a time (the server's argon2 slots are few)."""
    queue = list(chats)

    async def worker() -> None:
        while queue:
            await log_in(queue.pop(), participant_port, portal_port)

    await asyncio.gather(*(worker() for _ in range(4)))


async def therapist_says(pool: asyncio.Queue[Connection], chat: Chat, text: str) -> int:
    """Send ``text`` from the therapist's side of ``chat`` through the portal."""
    connection = await pool.get()
    try:
        status, _, _ = await connection.request(
            "POST",
            f"/en/chat/{chat.appointment}/compose",
            chat.therapist_cookie,
            {"form_token": chat.therapist_token, "text": text},
        )
    finally:
        pool.put_nowait(connection)
    return status


async def nojs_participant(
    chat: Chat, port: int, args: argparse.Namespace, figures: Figures
) -> None:
    """Reload the feed every interval with If-None-Match; now and then say something."""
    connection = Connection(port)
    feed = f"/en/chat/{chat.appointment}/feed"
    etag = ""
    await asyncio.sleep(random.uniform(0, args.interval))  # browsers do not move in step
    next_reload = time.monotonic()
    next_talk = next_reload + random.uniform(0, args.talk)
    while figures.running():
        if time.monotonic() >= next_talk:
            next_talk += args.talk
            started = time.monotonic()
            status, _, _ = await connection.request(
                "POST",
                f"/en/chat/{chat.appointment}/compose",
                chat.participant_cookie,
                {"form_token": chat.participant_token, "text": TEXT},
            )
            if figures.measuring():
                figures.posts.append((time.monotonic() - started) * 1000)
                figures.errors += status != 200
        started = time.monotonic()
        status, headers, _ = await connection.request(
            "GET", feed, chat.participant_cookie, etag=etag
        )
        if figures.measuring():
            figures.nojs.append((time.monotonic() - started) * 1000)
            figures.errors += status not in (200, 304)
        etag = headers.get("etag", etag)
        next_reload += args.interval
        await asyncio.sleep(max(0.0, next_reload - time.monotonic()))


async def nojs_therapist(
    chat: Chat, pool: asyncio.Queue[Connection], args: argparse.Namespace, figures: Figures
) -> None:
    """The other side of a no-JS chat: write back every ``--talk`` seconds."""
    await asyncio.sleep(random.uniform(0, args.talk))
    while figures.running():
        status = await therapist_says(pool, chat, TEXT)
        if figures.measuring():
            figures.errors += status != 200
        await asyncio.sleep(args.talk)


async def ws_participant(
    chat: Chat,
    ports: tuple[int, int],
    pool: asyncio.Queue[Connection],
    args: argparse.Namespace,
    figures: Figures,
    ready: asyncio.Event,
) -> None:
    """Hold the live socket; the therapist writes now and then; time each delivery."""
    participant_port, _ = ports
    connection = Connection(participant_port)
    feed = f"/en/chat/{chat.appointment}/feed"
    url = f"ws://127.0.0.1:{participant_port}/en/chat/{chat.appointment}/live"
    async with websocket(
        url,
        origin=f"http://127.0.0.1:{participant_port}",  # type: ignore[arg-type]
        additional_headers={"Cookie": chat.participant_cookie},
        ping_interval=None,
        open_timeout=60,
    ) as socket:
        figures.sockets += 1
        await ready.wait()
        await asyncio.sleep(random.uniform(0, args.ws_talk))
        number = 0
        while figures.running():
            number += 1
            marker = f"{TEXT} ({number})"
            started = time.monotonic()
            sending = asyncio.ensure_future(therapist_says(pool, chat, marker))
            while (await asyncio.wait_for(socket.recv(), 60)) != "news":
                pass  # a keep-alive "ping" from the server
            heard = time.monotonic()
            status, _, content = await connection.request("GET", feed, chat.participant_cookie)
            done = time.monotonic()
            await sending
            if figures.measuring():
                figures.news.append((heard - started) * 1000)
                figures.delivery.append((done - started) * 1000)
                figures.errors += status != 200 or marker.encode() not in content
            await asyncio.sleep(max(0.0, args.ws_talk - (time.monotonic() - started)))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def run_load(
    chats: list[Chat], server_pid: int, ports: tuple[int, int], args: argparse.Namespace
) -> Figures:
    """Log everyone in, open the sockets, then hold the load for a warm-up and the window."""
    participant_port, portal_port = ports
    began = time.monotonic()
    await log_in_all(chats, participant_port, portal_port)
    print(f"logged {len(chats)} pairs in, {time.monotonic() - began:.0f} s", flush=True)
    figures = Figures()
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.portal_connections):
        pool.put_nowait(Connection(portal_port))
    ready = asyncio.Event()
    plain, live = chats[: args.nojs], chats[args.nojs :]
    tasks = [
        asyncio.ensure_future(ws_participant(chat, ports, pool, args, figures, ready))
        for chat in live
    ]
    deadline = time.monotonic() + 120
    while figures.sockets < len(live) and time.monotonic() < deadline:
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.2)
    print(f"{figures.sockets} sockets open", flush=True)
    figures.started = time.monotonic() + args.interval + 1
    figures.ends = figures.started + args.seconds
    for chat in plain:
        tasks.append(asyncio.ensure_future(nojs_participant(chat, participant_port, args, figures)))
        tasks.append(asyncio.ensure_future(nojs_therapist(chat, pool, args, figures)))
    ready.set()
    await asyncio.sleep(max(0.0, figures.started - time.monotonic()))
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    await asyncio.sleep(max(0.0, figures.ends - time.monotonic()))
    figures.server_cpu = (cpu_seconds(server_pid) - server_before) / args.seconds
    figures.client_cpu = (time.process_time() - client_before) / args.seconds
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        print(f"{len(failures)} clients failed, first: {failures[0]!r}")
    figures.errors += len(failures)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--nojs", type=int, default=1000, help="no-JS participants")
    parser.add_argument("--ws", type=int, default=500, help="participants with the WebSocket")
    parser.add_argument("--interval", type=float, default=5, help="feed reload interval, s")
    parser.add_argument("--talk", type=float, default=60, help="seconds between messages")
    parser.add_argument("--ws-talk", type=float, default=20, help="seconds between deliveries")
    parser.add_argument("--seconds", type=float, default=60, help="length of the measured window")
    parser.add_argument("--portal-connections", type=int, default=50)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "instance"
        env = {
            **argon2_env(FAST_FOR_TESTS),
            "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
            "STILLROOM_ARGON2_CONCURRENCY": "2",
        }
        os.environ.update({**env, "STILLROOM_DATA_DIR": str(data_dir)})
        began = time.monotonic()
        chats = create_chats(args.nojs + args.ws, data_dir)
        print(f"created {len(chats)} pairs, {time.monotonic() - began:.0f} s", flush=True)
        server = start_server(data_dir, env)
        try:
            ports = (
                urllib.parse.urlsplit(server.url).port,
                urllib.parse.urlsplit(server.portal_url).port,
            )
            figures = asyncio.run(run_load(chats, server.process.pid, ports, args))  # type: ignore[arg-type]
            rss = peak_rss_mb(server.process.pid)
        finally:
            stop_server(server)
    print(
        f"no-JS: {len(figures.nojs)} feed reloads in {args.seconds:.0f} s"
        f" ({len(figures.nojs) / args.seconds:.0f}/s), p50 {percentile(figures.nojs, 0.5):.1f} ms,"
        f" p99 {percentile(figures.nojs, 0.99):.1f} ms;"
        f" {len(figures.posts)} messages sent, p99 {percentile(figures.posts, 0.99):.1f} ms"
    )
    print(
        f"WebSocket: {len(figures.delivery)} deliveries, news on the socket p99"
        f" {percentile(figures.news, 0.99):.1f} ms; message in hand p50"
        f" {percentile(figures.delivery, 0.5):.1f} ms,"
        f" p99 {percentile(figures.delivery, 0.99):.1f} ms"
    )
    print(
        f"CPU in the window: server {figures.server_cpu:.0%} of a core,"
        f" this load generator {figures.client_cpu:.0%}; errors: {figures.errors}"
    )
    print(
        f"nojs_clients={args.nojs} nojs_p99_ms={percentile(figures.nojs, 0.99):.1f}"
        f" ws_clients={figures.sockets} ws_p99_ms={percentile(figures.delivery, 0.99):.1f}"
        f" rss_mb={rss:.0f}"
    )
    return 1 if figures.errors else 0


if __name__ == "__main__":
    sys.exit(main())
