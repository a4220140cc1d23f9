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
import os
import random
import resource
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers
from loadclients import (
    Chat,
    Connection,
    create_chats,
    log_in_all,
    peak_rss_mb,
    percentile,
)
from websockets.asyncio.client import connect as websocket

from stillroom.crypto.kdf import FAST_FOR_TESTS
from stillroom.webapp.settings import Settings

from support import argon2_env, start_server, stop_server

TEXT = "Thank you. I would like to talk about how the week went, if that is all right."


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


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        chats = create_chats(args.nojs + args.ws, Settings.load())
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
