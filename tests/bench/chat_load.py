"""How many chats one server carries on this machine, with what latency and memory.

Starts ``stillroom serve --no-tor`` (the production server) on 127.0.0.1, twice over
the same data directory, and runs four phases, each measured by the server process's
own CPU time (``/proc/PID/stat``):

1. *304s*, holding off (``STILLROOM_FEED_HOLD_SECONDS=0``): ``--connections-304``
   participants reload their unchanged feed as fast as they can: CPU per ``304``, p99;
2. *idle, plain reloads*, same server: the ``--nojs`` participants reload every
   ``--interval`` seconds, nobody writes: CPU per idle participant-minute;
3. *idle, held feeds* (only with ``--feed held``), the server started again with the
   feed hold on (``--hold`` seconds, else the server's default): each reload waits for
   news or the hold's end, then the next follows the pause the page asks for;
4. *chatting*: the load below, CPU per chatting participant-minute.

In the chatting phase it keeps, all at once:

* ``--nojs`` participants without JavaScript, each on its own keep-alive connection,
  on held feeds (``--feed held``: a reload may take up to the hold time, and the next
  follows the page's meta refresh) or on plain reloads every ``--interval`` seconds
  (``--feed reload``), always with ``If-None-Match`` as Tor Browser sends it, and
  sending a message every ``--talk`` seconds; a delivery to them is timed from the
  therapist's send until their feed holds the message;
* ``--ws`` participants with JavaScript, each holding the chat's WebSocket; their
  therapists write to them every ``--ws-talk`` seconds, and a delivery is timed from
  the moment the therapist's message is sent until the participant holds the feed
  page that shows it (the "news" on the socket, then the feed reload it triggers);
* the therapists of the no-JS chats writing back every ``--talk`` seconds.

Every chat is its own participant-therapist pair with an appointment that is open now.
Accounts are made in this process before the server starts and use the test suite's
argon2 costs, so that setting up thousands takes seconds; the measured minute runs no
argon2 at all. Latency is measured from this process, once every no-JS feed and support
panel has had its first page and one interval more. All chats opening within one
interval, as after a restart, is a burst of its own: its length (``opening_s``) and its
no-JS deliveries are printed apart, and its errors count with the window's.

With ``--assist`` both servers run the therapist support with every feature on
(``STILLROOM_ASSIST=related,risk,summary``, the example snippets, and a random-weight model
of about half a billion parameters written at start, or ``--assist-model``): the therapists
of the first ``--panels`` no-JS chats hold the support panel beside their chat (held like
the feed; each of their participant's messages is embedded and checked for risk topics),
and one more therapist has a draft summary written, one after another, through every
phase. It also prints ``panel_p50_ms``/``panel_p99_ms`` (from a participant's send until
their therapist's panel answers with it), ``panels_unchecked`` (of those answers, how many
said that support could not work its suggestions out in time), ``drafts`` (finished while
the second server ran) and ``model_rss_mb`` (the model server's peak, a process of its own).

Prints the figures and, last,
``nojs_clients=N nojs_delivery_p99_ms=X ws_clients=N ws_p99_ms=X rss_mb=X
cpu_us_per_304=X p99_ms_304=X idle_reload_cpu_ms_per_min=X idle_held_cpu_ms_per_min=X
chatting_cpu_ms_per_min=X errors=N opening_s=X`` (``rss_mb`` is the server's peak
resident memory, VmHWM, over both servers).

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_load.py                # held feeds
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_load.py --feed reload  # 5 s reloads
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_load.py --nojs 100 --ws 50 \
        --seconds 20 --idle-seconds 20 --seconds-304 5                        # a short try
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_load.py --assist       # with support
"""

from __future__ import annotations

import argparse
import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers
from loadclients import (
    Chat,
    Connection,
    create_chats,
    log_in_all,
    log_in_therapist,
    peak_rss_mb,
    percentile,
)
from tinygguf import write_tiny_model
from websockets.asyncio.client import connect as websocket

from stillroom.crypto.kdf import FAST_FOR_TESTS
from stillroom.webapp.settings import Settings

from support import LiveServer, argon2_env, start_server, stop_server

#: What a panel says when support did not answer in time (no prompts shown, none ruled out).
UNCHECKED = b"could not be worked out"
#: The example snippet library, for ``--assist``.
SNIPPETS = Path(__file__).resolve().parents[2] / "examples" / "snippets"
#: A random-weight model of about the shape of a half-billion-parameter one (for ``--assist``):
#: dimensions, layers, heads, key-value heads, feed-forward size.
MODEL_SHAPE = (896, 24, 14, 2, 4864)
TEXT = "Thank you. I would like to talk about how the week went, if that is all right."
#: A therapist's message to a no-JS participant carries its number, to time its delivery.
MARKER = re.compile(rb"\[(\d+)\]")
#: A feed page's meta refresh: its pause, and the address it reloads (a held feed's
#: reload names the page it shows, ``?seen=``; only such reloads are held).
REFRESH = re.compile(rb'http-equiv="refresh" content="(\d+)(?:; url=([^"]*))?"')
#: The longest the opening burst is waited for before the window starts anyway.
OPENING_SECONDS = 180


@dataclass
class Figures:
    """Latencies in milliseconds, kept only inside the measured window."""

    nojs: list[float] = field(default_factory=list)
    posts: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    news: list[float] = field(default_factory=list)
    nojs_delivery: list[float] = field(default_factory=list)
    sent: dict[int, float] = field(default_factory=dict)
    panel: list[float] = field(default_factory=list)
    panel_unchecked: int = 0
    said: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    timed: int = 0
    sockets: int = 0
    first_pages: int = 0
    opening: float = 0.0
    opening_now: bool = False
    opening_delivery: list[float] = field(default_factory=list)
    opening_errors: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    started: float = float("inf")
    ends: float = float("inf")

    def measuring(self) -> bool:
        """Whether now lies inside the measured window."""
        return self.started <= time.monotonic() < self.ends

    def failed(self, what: str, problem: BaseException) -> None:
        """Count a request that failed inside the window or the opening, and say what it was."""
        if self.counting():
            self.count_error(True)
            print(f"{what} failed: {problem!r}", flush=True)

    def counting(self) -> bool:
        """Whether errors count now: inside the window, or in the opening before it."""
        return self.measuring() or self.opening_now

    def count_error(self, bad: bool) -> None:
        """Count a wrong answer when errors count; the opening's are also kept apart."""
        if self.counting():
            self.errors += bad
            self.opening_errors += bad and self.opening_now

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


async def reload_feed(
    connection: Connection, chat: Chat, etag: str, args: argparse.Namespace, query: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Reload the feed as the meta refresh does; on a held feed it may take the hold time."""
    feed = f"/en/chat/{chat.appointment}/feed{query}"
    timeout = args.hold_limit + 30 if args.feed == "held" else 30
    return await connection.request(
        "GET", feed, chat.participant_cookie, etag=etag, timeout=timeout
    )


async def nojs_participant(
    chat: Chat, port: int, args: argparse.Namespace, figures: Figures, talks: bool = True
) -> None:
    """Reload the feed with If-None-Match, held or every interval; now and then say something.

    On held feeds the next reload follows the pause the page asks for (its meta
    refresh); a message is written in between, as a person types while the feed waits.
    """
    connection = Connection(port)
    # As a browser's cache: each address's copy, with its ETag and what its refresh asks.
    copies: dict[str, tuple[str, float, str]] = {}
    pause, query = args.interval, ""
    await asyncio.sleep(random.uniform(0, args.interval))  # browsers do not move in step
    next_reload = time.monotonic()
    next_talk = next_reload + random.uniform(0, args.talk)
    writing = None
    while figures.running():
        if talks and time.monotonic() >= next_talk:
            next_talk += args.talk
            writing = asyncio.ensure_future(participant_says(chat, port, figures))
        started = time.monotonic()
        try:
            etag = copies[query][0] if query in copies else ""
            status, headers, content = await reload_feed(connection, chat, etag, args, query)
        except (TimeoutError, ConnectionError) as problem:
            figures.failed("feed reload", problem)
            continue
        done = time.monotonic()
        if not copies and status == 200:
            figures.first_pages += 1
        if figures.measuring():
            figures.nojs.append((done - started) * 1000)
        figures.count_error(status not in (200, 304))
        if status == 200:
            for number in MARKER.findall(content):
                sent = figures.sent.pop(int(number), None)
                if sent is not None and figures.measuring():
                    figures.nojs_delivery.append((done - sent) * 1000)
                elif sent is not None and figures.opening_now:
                    figures.opening_delivery.append((done - sent) * 1000)
            asked = REFRESH.search(content)
            if args.feed == "held" and asked and float(asked.group(1)) > 0 and figures.measuring():
                figures.timed += 1  # a hold refused: the page reloads on a timer instead
            copies[query] = (
                headers.get("etag", ""),
                float(asked.group(1)) if asked else args.interval,
                asked.group(2).decode() if asked and asked.group(2) else "",
            )
        if query in copies:  # the page shown: the new one, or the copy a 304 kept
            _, pause, query = copies[query]
        if args.feed == "held":
            await asyncio.sleep(pause)
        else:
            next_reload += args.interval
            await asyncio.sleep(max(0.0, next_reload - time.monotonic()))
    if writing is not None:
        await writing


async def participant_says(chat: Chat, port: int, figures: Figures) -> None:
    """Send a message from a no-JS participant on a connection of its own (the compose frame)."""
    started = time.monotonic()
    figures.said[chat.appointment] = started  # for the therapist's support panel
    compose = Connection(port)  # the feed's connection may be held meanwhile
    try:
        status, _, _ = await compose.request(
            "POST",
            f"/en/chat/{chat.appointment}/compose",
            chat.participant_cookie,
            {"form_token": chat.participant_token, "text": TEXT},
        )
    finally:
        compose.close()
    if figures.measuring():
        figures.posts.append((time.monotonic() - started) * 1000)
    figures.count_error(status != 200)


async def nojs_therapist(
    chat: Chat, pool: asyncio.Queue[Connection], args: argparse.Namespace, figures: Figures
) -> None:
    """The other side of a no-JS chat: write back every ``--talk`` seconds, numbered."""
    await asyncio.sleep(random.uniform(0, args.talk))
    while figures.running():
        number = random.randrange(1 << 40)
        figures.sent[number] = time.monotonic()
        status = await therapist_says(pool, chat, f"{TEXT} [{number}]")
        figures.count_error(status != 200)
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


async def therapist_panel(
    chat: Chat, port: int, args: argparse.Namespace, figures: Figures
) -> None:
    """Keep the support panel beside the chat, as the portal's frame does: held until news.

    The panel is ``no-store``, so a browser keeps no copy to ask about: no ``If-None-Match``.
    """
    connection = Connection(port)
    await asyncio.sleep(random.uniform(0, args.interval))
    query, opened = "", False
    while figures.running():
        try:
            status, _, content = await connection.request(
                "GET",
                f"/en/chat/{chat.appointment}/assist{query}",
                chat.therapist_cookie,
                timeout=args.hold_limit + 30,
            )
        except (TimeoutError, ConnectionError) as problem:
            figures.failed("panel reload", problem)
            continue
        done = time.monotonic()
        if not opened and status == 200:
            figures.first_pages, opened = figures.first_pages + 1, True
        said = figures.said.pop(chat.appointment, None) if status == 200 else None
        figures.count_error(status not in (200, 304))
        if figures.measuring() and said is not None:
            figures.panel.append((done - said) * 1000)
            figures.panel_unchecked += UNCHECKED in content
        asked = REFRESH.search(content) if status == 200 else None
        if asked:
            pause = float(asked.group(1))
            query = asked.group(2).decode() if asked.group(2) else ""
        await asyncio.sleep(pause if asked else args.interval)


@dataclass
class Drafting:
    """One therapist having draft summaries written, one after another, and how they went."""

    chat: Chat
    port: int
    seconds: list[float] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    errors: int = 0
    stopping: bool = False

    async def prepare(self, participant_port: int) -> None:
        """Give the chat a few messages both ways, then close it, so that a draft may be asked."""
        for _ in range(3):
            await participant_says(self.chat, participant_port, Figures())
        await therapist_says_once(self.chat, self.port, "How did you handle the urges?")
        portal = Connection(self.port)
        await portal.request(
            "POST",
            f"/en/chat/{self.chat.appointment}/close",
            self.chat.therapist_cookie,
            {"form_token": self.chat.therapist_token},
        )
        portal.close()

    async def run(self) -> None:
        """Ask for drafts until stopped; time each from the request to the page's end."""
        while not self.stopping:
            started = time.monotonic()
            try:
                page = await asyncio.wait_for(self.draft_page(), 1200)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                self.errors += 1
                continue
            if b"</textarea>" not in page or b"</html>" not in page:
                self.errors += 1
                continue
            self.seconds.append(time.monotonic() - started)
            text = page.split(b'name="text" rows="20">', 1)[1].split(b"</textarea>", 1)[0]
            self.chars.append(len(text.decode(errors="replace")))

    async def draft_page(self) -> bytes:
        """POST for a draft and read the streamed page to its end (the server closes it)."""
        body = urllib.parse.urlencode({"form_token": self.chat.therapist_token}).encode()
        head = (
            f"POST /en/chat/{self.chat.appointment}/draft HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nSec-Fetch-Site: same-origin\r\n"
            f"Cookie: {self.chat.therapist_cookie}\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head.encode() + body)
            return await reader.read(-1)
        finally:
            writer.close()


async def therapist_says_once(chat: Chat, port: int, text: str) -> None:
    """Send ``text`` from the therapist's side on a connection of its own."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    connection = Connection(port)
    pool.put_nowait(connection)
    await therapist_says(pool, chat, text)
    connection.close()


def model_server_pid(server_pid: int) -> int | None:
    """Return the pid of the model server that ``serve`` started, if any."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"assist.llama" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_304s(
    chats: list[Chat], server_pid: int, port: int, args: argparse.Namespace
) -> tuple[float, list[float]]:
    """Reload unchanged feeds as fast as the server answers, on as many connections as chats.

    Return the server's CPU time per ``304`` in microseconds, and each answer's time in ms.
    """
    connections = [Connection(port) for _ in chats]
    etags = []
    for connection, chat in zip(connections, chats, strict=True):
        _, headers, _ = await reload_feed(connection, chat, "", args)
        etags.append(headers["etag"])
    times: list[float] = []
    answers = [0]
    ends = time.monotonic() + args.seconds_304

    async def reload_until_the_end(connection: Connection, chat: Chat, etag: str) -> None:
        while time.monotonic() < ends:
            started = time.monotonic()
            status, _, _ = await reload_feed(connection, chat, etag, args)
            times.append((time.monotonic() - started) * 1000)
            assert status == 304, status
            answers[0] += 1

    before = cpu_seconds(server_pid)
    await asyncio.gather(
        *(
            reload_until_the_end(c, chat, e)
            for c, chat, e in zip(connections, chats, etags, strict=True)
        )
    )
    cpu = cpu_seconds(server_pid) - before
    for connection in connections:
        connection.close()
    return cpu / max(1, answers[0]) * 1e6, times


async def measure_idle(
    chats: list[Chat], server_pid: int, port: int, args: argparse.Namespace
) -> tuple[float, int]:
    """Keep ``chats`` on their feeds with nobody writing; return CPU ms per participant-minute."""
    figures = Figures()
    # Everyone has opened the feed and is past the brief hold after an opening (3 s).
    figures.started = time.monotonic() + args.interval + 5
    figures.ends = figures.started + args.idle_seconds
    tasks = [
        asyncio.ensure_future(nojs_participant(chat, port, args, figures, talks=False))
        for chat in chats
    ]
    await asyncio.sleep(max(0.0, figures.started - time.monotonic()))
    before = cpu_seconds(server_pid)
    await asyncio.sleep(max(0.0, figures.ends - time.monotonic()))
    cpu = cpu_seconds(server_pid) - before
    results = await finish(tasks, args.hold_limit + 60)
    failures = sum(isinstance(result, BaseException) for result in results)
    minutes = len(chats) * args.idle_seconds / 60
    return cpu * 1000 / minutes, figures.errors + failures


async def finish(tasks: list[asyncio.Future[None]], seconds: float) -> list[object]:
    """Wait for the clients to end their last request; cancel any still waiting after
    ``seconds`` (a failure each) and say which kind of client they were."""
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    if pending:
        kinds: dict[str, int] = {}
        for task in pending:
            name = getattr(task, "get_coro", lambda: None)()
            kind = getattr(name, "__qualname__", "client")
            kinds[kind] = kinds.get(kind, 0) + 1
            task.cancel()
        print(f"clients still waiting after {seconds:.0f} s, cancelled: {kinds}", flush=True)
        await asyncio.wait(pending, timeout=10)
    return [
        task.exception() if task.done() and not task.cancelled() else TimeoutError("waiting")
        for task in tasks
    ]


async def run_load(
    chats: list[Chat], server_pid: int, ports: tuple[int, int], args: argparse.Namespace
) -> Figures:
    """Open the sockets, then hold the chatting load for a warm-up and the window."""
    participant_port, portal_port = ports
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
    for chat in plain:
        tasks.append(asyncio.ensure_future(nojs_participant(chat, participant_port, args, figures)))
        tasks.append(asyncio.ensure_future(nojs_therapist(chat, pool, args, figures)))
    for chat in plain[: args.panels] if args.assist else []:
        tasks.append(asyncio.ensure_future(therapist_panel(chat, portal_port, args, figures)))
    ready.set()
    panels = len(plain[: args.panels]) if args.assist else 0
    figures.opening = await opening(figures, len(plain) + panels, tasks)
    figures.started = time.monotonic() + args.interval + 1
    figures.ends = figures.started + args.seconds
    await asyncio.sleep(max(0.0, figures.started - time.monotonic()))
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    await asyncio.sleep(max(0.0, figures.ends - time.monotonic()))
    figures.server_cpu = (cpu_seconds(server_pid) - server_before) / args.seconds
    figures.client_cpu = (time.process_time() - client_before) / args.seconds
    results = await finish(tasks, args.hold_limit + 60)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        print(f"{len(failures)} clients failed, first: {failures[0]!r}")
    figures.errors += len(failures)
    return figures


async def opening(figures: Figures, pages: int, tasks: list[asyncio.Future[None]]) -> float:
    """Wait until every feed and panel has had its first page, at most ``OPENING_SECONDS``
    and no longer once a client has failed; return how long it took.

    Its errors count with the window's; its deliveries are printed apart.
    """
    began = time.monotonic()
    figures.opening_now = True
    while (
        figures.first_pages < pages
        and time.monotonic() - began < OPENING_SECONDS
        and not any(task.done() for task in tasks)
    ):
        await asyncio.sleep(0.1)
    figures.opening_now = False
    took = time.monotonic() - began
    print(
        f"opening: {figures.first_pages} of {pages} feeds and panels had their first page"
        f" in {took:.1f} s; during it {len(figures.opening_delivery)} no-JS deliveries,"
        f" p50 {percentile(figures.opening_delivery, 0.5):.1f} ms,"
        f" p99 {percentile(figures.opening_delivery, 0.99):.1f} ms;"
        f" errors {figures.opening_errors}",
        flush=True,
    )
    return took


async def start_drafting(
    chat: Chat | None, ports: tuple[int, int]
) -> tuple[Drafting | None, asyncio.Future[None] | None]:
    """With ``--assist``, log the drafting therapist in and start asking for drafts."""
    if chat is None:
        return None, None
    participant_port, portal_port = ports
    drafting = Drafting(chat, portal_port)
    if chat.participant_cookie:  # the chat was written and closed on the first server
        await log_in_therapist(chat, portal_port, where="")
    else:
        await log_in_all([chat], participant_port, portal_port)
        await drafting.prepare(participant_port)
    return drafting, asyncio.ensure_future(drafting.run())


async def stop_drafting(task: asyncio.Future[None] | None) -> None:
    """Stop asking for drafts (a draft under way is abandoned, as a closed tab would)."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ports_of(server: LiveServer) -> tuple[int, int]:
    """Return the participant app's and the portal's ports."""
    return (
        urllib.parse.urlsplit(server.url).port,  # type: ignore[return-value]
        urllib.parse.urlsplit(server.portal_url).port,
    )


async def without_hold(
    chats: list[Chat], server: LiveServer, args: argparse.Namespace, drafter: Chat | None
) -> dict[str, float]:
    """Phases 1 and 2, on a server that holds no reload."""
    participant_port, portal_port = ports_of(server)
    pid = server.process.pid
    began = time.monotonic()
    await log_in_all(chats[: args.nojs], participant_port, portal_port)
    print(f"logged {args.nojs} pairs in, {time.monotonic() - began:.0f} s", flush=True)
    _, drafting = await start_drafting(drafter, (participant_port, portal_port))
    per_304, times = await measure_304s(chats[: args.connections_304], pid, participant_port, args)
    print(
        f"304s: {len(times)} in {args.seconds_304:.0f} s on {args.connections_304} connections,"
        f" {per_304:.0f} µs of server CPU each, p50 {percentile(times, 0.5):.1f} ms,"
        f" p99 {percentile(times, 0.99):.1f} ms",
        flush=True,
    )
    reload_args = argparse.Namespace(**{**vars(args), "feed": "reload"})
    idle, errors = await measure_idle(chats[: args.nojs], pid, participant_port, reload_args)
    await stop_drafting(drafting)
    print(
        f"idle, reloads every {args.interval:.0f} s: {idle:.2f} ms of server CPU per"
        f" participant-minute ({args.nojs} participants, {args.idle_seconds:.0f} s)",
        flush=True,
    )
    return {
        "cpu_us_per_304": per_304,
        "p99_ms_304": percentile(times, 0.99),
        "idle_reload_cpu_ms_per_min": idle,
        "errors": errors,
    }


async def with_hold(
    chats: list[Chat], server: LiveServer, args: argparse.Namespace, drafter: Chat | None
) -> tuple[dict[str, float], Figures, Drafting | None]:
    """Phases 3 and 4, on a server with the chosen feed mode."""
    participant_port, portal_port = ports_of(server)
    pid = server.process.pid
    began = time.monotonic()
    await log_in_all(chats, participant_port, portal_port)
    print(f"logged {len(chats)} pairs in, {time.monotonic() - began:.0f} s", flush=True)
    drafts, drafting = await start_drafting(drafter, (participant_port, portal_port))
    figures: dict[str, float] = {"errors": 0}
    if args.feed == "held":
        idle, errors = await measure_idle(chats[: args.nojs], pid, participant_port, args)
        print(
            f"idle, held feeds: {idle:.2f} ms of server CPU per participant-minute",
            flush=True,
        )
        figures.update(idle_held_cpu_ms_per_min=idle, errors=errors)
    load = await run_load(chats, pid, (participant_port, portal_port), args)
    await stop_drafting(drafting)
    minutes = len(chats) * args.seconds / 60
    figures["chatting_cpu_ms_per_min"] = load.server_cpu * args.seconds * 1000 / minutes
    return figures, load, drafts


def assist_env(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    """Return the settings that turn every support feature on, with a model to run."""
    model = args.assist_model
    if model is None:
        began = time.monotonic()
        dims, layers, heads, kv_heads, feed_forward = MODEL_SHAPE
        model = write_tiny_model(
            tmp / "model.gguf", 19, dims, layers, heads, kv_heads, feed_forward
        )
        size = model.stat().st_size / 1e6
        print(f"wrote a random-weight model, {size:.0f} MB, {time.monotonic() - began:.0f} s")
    return {
        "STILLROOM_ASSIST": "related,risk,summary",
        "STILLROOM_ASSIST_SNIPPETS": str(SNIPPETS),
        "STILLROOM_ASSIST_MODEL": str(model),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--nojs", type=int, default=1000, help="no-JS participants")
    parser.add_argument("--ws", type=int, default=500, help="participants with the WebSocket")
    parser.add_argument(
        "--feed",
        choices=("held", "reload"),
        default="held",
        help="no-JS feeds held until news (a server without the hold answers at once, and"
        " the next reload follows the page's refresh) or reloaded every --interval",
    )
    parser.add_argument(
        "--hold", type=float, default=None, help="the server's feed hold, s (its default if unset)"
    )
    parser.add_argument("--interval", type=float, default=5, help="plain reload interval, s")
    parser.add_argument("--talk", type=float, default=60, help="seconds between messages")
    parser.add_argument("--ws-talk", type=float, default=20, help="seconds between deliveries")
    parser.add_argument("--seconds", type=float, default=60, help="the chatting window, s")
    parser.add_argument("--idle-seconds", type=float, default=60, help="each idle window, s")
    parser.add_argument("--seconds-304", type=float, default=10, help="the 304 window, s")
    parser.add_argument("--connections-304", type=int, default=20)
    parser.add_argument("--portal-connections", type=int, default=50)
    parser.add_argument(
        "--assist", action="store_true", help="therapist support on: panels and one draft"
    )
    parser.add_argument(
        "--assist-model", type=Path, default=None, help="a GGUF model (else a random-weight one)"
    )
    parser.add_argument(
        "--panels", type=int, default=None, help="therapists with the panel open (all no-JS)"
    )
    args = parser.parse_args()
    args.panels = args.nojs if args.panels is None else args.panels
    args.hold_limit = args.hold if args.hold is not None else 120
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
        chats = create_chats(args.nojs + args.ws + args.assist, Settings.load())
        print(f"created {len(chats)} pairs, {time.monotonic() - began:.0f} s", flush=True)
        drafter = chats.pop() if args.assist else None
        if args.assist:
            env.update(assist_env(args, Path(tmp)))
        server = start_server(data_dir, {**env, "STILLROOM_FEED_HOLD_SECONDS": "0"})
        try:
            plain = asyncio.run(without_hold(chats, server, args, drafter))
            rss = peak_rss_mb(server.process.pid)
            print(f"peak RSS of the server without the hold: {rss:.0f} MB", flush=True)
        finally:
            stop_server(server)
        hold = {} if args.hold is None else {"STILLROOM_FEED_HOLD_SECONDS": f"{args.hold:g}"}
        if args.feed == "reload":
            hold = {"STILLROOM_FEED_HOLD_SECONDS": "0"}
        server = start_server(data_dir, {**env, **hold})
        try:
            held, figures, drafts = asyncio.run(with_hold(chats, server, args, drafter))
            rss = max(rss, peak_rss_mb(server.process.pid))
            model = model_server_pid(server.process.pid)
            model_rss = peak_rss_mb(model) if model else float("nan")
        finally:
            stop_server(server)
    errors = int(plain["errors"] + held["errors"]) + figures.errors
    support = ""
    if drafts is not None:
        errors += drafts.errors
        finished = drafts.seconds
        print(
            f"support: {len(figures.panel)} panels answered after a participant's message,"
            f" p50 {percentile(figures.panel, 0.5):.1f} ms,"
            f" p99 {percentile(figures.panel, 0.99):.1f} ms, of which {figures.panel_unchecked}"
            " said support could not work its suggestions out;"
            f" {len(finished)} drafts finished"
            f" while the second server ran ({', '.join(f'{t:.0f} s' for t in finished) or 'none'}),"
            f" {drafts.errors} failed; the model server's peak RSS {model_rss:.0f} MB"
        )
        support = (
            f" panel_p50_ms={percentile(figures.panel, 0.5):.1f}"
            f" panel_p99_ms={percentile(figures.panel, 0.99):.1f}"
            f" panels_unchecked={figures.panel_unchecked}"
            f" drafts={len(finished)} model_rss_mb={model_rss:.0f}"
        )
    print(
        f"no-JS ({args.feed}): {len(figures.nojs)} feed answers in {args.seconds:.0f} s,"
        f" {len(figures.nojs_delivery)} deliveries p50"
        f" {percentile(figures.nojs_delivery, 0.5):.1f} ms,"
        f" p99 {percentile(figures.nojs_delivery, 0.99):.1f} ms;"
        f" {len(figures.posts)} messages sent, p99 {percentile(figures.posts, 0.99):.1f} ms;"
        f" {figures.timed} pages told to reload on a timer (a hold refused)"
    )
    print(
        f"WebSocket: {len(figures.delivery)} deliveries, news on the socket p99"
        f" {percentile(figures.news, 0.99):.1f} ms; message in hand p50"
        f" {percentile(figures.delivery, 0.5):.1f} ms,"
        f" p99 {percentile(figures.delivery, 0.99):.1f} ms"
    )
    print(
        f"CPU in the chatting window: server {figures.server_cpu:.0%} of a core,"
        f" this load generator {figures.client_cpu:.0%}; errors: {errors}"
    )
    print(
        f"nojs_clients={args.nojs}"
        f" nojs_delivery_p99_ms={percentile(figures.nojs_delivery, 0.99):.1f}"
        f" ws_clients={figures.sockets} ws_p99_ms={percentile(figures.delivery, 0.99):.1f}"
        f" rss_mb={rss:.0f} cpu_us_per_304={plain['cpu_us_per_304']:.0f}"
        f" p99_ms_304={plain['p99_ms_304']:.1f}"
        f" idle_reload_cpu_ms_per_min={plain['idle_reload_cpu_ms_per_min']:.2f}"
        f" idle_held_cpu_ms_per_min={held.get('idle_held_cpu_ms_per_min', float('nan')):.2f}"
        f" chatting_cpu_ms_per_min={held['chatting_cpu_ms_per_min']:.2f} errors={errors}"
        f" opening_s={figures.opening:.1f}{support}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
