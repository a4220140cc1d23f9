"""Count the bytes a participant's no-JS chat costs, through the real server.

Starts ``stillroom serve --no-tor`` on 127.0.0.1, enrols a therapist and books a
time through the real pages, and then drives the chat as Tor Browser at "Safest"
does: the chat page once, the compose frame, and the feed frame reloading at the
interval the server asks for, with ``If-None-Match``. Every byte of every request
and response is counted (status line, headers and body, both directions).

The reference chat is 20 minutes with 20 messages each way, evenly spread. The
server's clock is not moved, so it sees the other side as active throughout and
asks for its shortest interval: the figure is the upper bound.

Then it plays the same chat again in real time on the held feed, as the browser
does: each reload may be held by the server until news arrives (or its hold ends),
and the next follows after the pause the page asks for. A server without the hold
answers at once, so before it the held run shows plain meta-refresh reloads. Each
of the therapist's messages is numbered, and its delivery is timed from its send to
the participant's feed page that shows it. Last, the chat stays open with nobody
writing for ``--idle-seconds``, counting both directions.

Prints the figures and, last, ``idle_reload_bytes=N``, ``reference_chat_bytes=N`` (on
5 s reloads), ``held_reference_chat_bytes=N``, ``delivery_p50_ms=X``,
``delivery_p99_ms=X`` and ``held_feed_idle_bytes_per_minute=N``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_bytes.py              # 20 + 3 minutes
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/chat_bytes.py --speed 4 --idle-seconds 60

``--speed N`` plays the held chat N times faster (messages closer together; the
server's hold and the browser's pause keep their real length), for a quick try.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.py
import pyotp

from support import (
    FORM_TOKEN,
    PASSPHRASE,
    PENDING,
    TOTP_SECRET,
    add_therapist_by_cli,
    start_server,
    stop_server,
)

MINUTES = 20
MESSAGES_EACH_WAY = 20
SAMPLE = [
    "Hello. I am not sure where to start.",
    "That is fine. Start wherever feels right to you.",
    "Last week was hard. I avoided the places that make it worse, but it took a lot.",
    "It sounds like you did something important there. What helped you most?",
    "Talking to someone, I think. And keeping busy in the evenings.",
]


@dataclass
class Browser:
    """A minimal HTTP/1.1 client that keeps cookies and counts every byte both ways."""

    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    received: int = 0
    #: Seconds to wait for an answer; a held feed reload waits up to the hold time.
    timeout: float = 30

    def request(
        self, method: str, path: str, body: dict[str, str] | None = None, etag: str | None = None
    ) -> tuple[int, dict[str, str], str, int]:
        """Send one request; return status, headers, body text and the response's bytes."""
        payload = urllib.parse.urlencode(body).encode() if body is not None else b""
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "User-Agent: Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "Accept-Language: en-US,en;q=0.5",
            "Accept-Encoding: gzip, deflate",
            "Connection: keep-alive",
            "Sec-Fetch-Site: same-origin",
        ]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if etag:
            lines.append(f"If-None-Match: {etag}")
        if body is not None:
            lines += [
                "Content-Type: application/x-www-form-urlencoded",
                f"Content-Length: {len(payload)}",
            ]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            sock.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                rest += sock.recv(65536)
        for cookie in [v for k, v in headers.items() if k == "set-cookie"]:
            name, value = cookie.split(";", 1)[0].split("=", 1)
            self.cookies[name] = value
        cost = len(head) + 4 + length  # what the participant downloads for it
        self.sent += len(raw)
        self.received += len(head) + 4 + length
        content = rest[:length]
        if headers.get("content-encoding") == "gzip":
            content = gzip.decompress(content)
        return int(head.split(b" ", 2)[1]), headers, content.decode(), cost


def form_token(html: str) -> str:
    return FORM_TOKEN.search(html).group(1)  # type: ignore[union-attr]


def set_up(participant_url: str, portal_url: str, data_dir: Path) -> tuple[Browser, Browser, str]:
    """Enrol a therapist, publish a time in 70 minutes, book it; return both sides and its id."""
    p_host, p_port = urllib.parse.urlsplit(participant_url).netloc.split(":")
    t_host, t_port = urllib.parse.urlsplit(portal_url).netloc.split(":")
    therapist = Browser(t_host, int(t_port))
    participant = Browser(p_host, int(p_port))
    _, token = add_therapist_by_cli(data_dir, "Bench")
    _, _, page, _ = therapist.request("GET", f"/en/enrol/{token}")
    secret = TOTP_SECRET.search(page).group(1).replace(" ", "")  # type: ignore[union-attr]
    therapist.request(
        "POST",
        f"/en/enrol/{token}",
        {
            "form_token": form_token(page),
            "pending": PENDING.search(page).group(1),  # type: ignore[union-attr]
            "confirm": PASSPHRASE.search(page).group(1),  # type: ignore[union-attr]
            "code": pyotp.TOTP(secret).now(),
        },
    )
    soon = datetime.datetime.now(ZoneInfo("Europe/Berlin")) + datetime.timedelta(minutes=70)
    _, _, page, _ = therapist.request("GET", "/en/availability")
    therapist.request(
        "POST",
        "/en/availability",
        {
            "form_token": form_token(page),
            "date": soon.date().isoformat(),
            "time": soon.strftime("%H:%M"),
            "duration": "50",
            "weeks": "1",
            "languages": "en",
        },
    )
    _, _, page, _ = participant.request("GET", "/en/create")
    participant.request(
        "POST",
        "/en/create",
        {
            "form_token": form_token(page),
            "pending": PENDING.search(page).group(1),  # type: ignore[union-attr]
            "confirm": PASSPHRASE.search(page).group(1),
        },
    )  # type: ignore[union-attr]
    _, _, page, _ = participant.request("GET", "/en/book")
    slot = re.search(r"name=slot value=([0-9a-f]+)", page).group(1)  # type: ignore[union-attr]
    participant.request("POST", "/en/book", {"form_token": form_token(page), "slot": slot})
    _, _, page, _ = participant.request("GET", "/en/account")
    appointment = re.search(r"/en/chat/([0-9a-f]+)", page).group(1)  # type: ignore[union-attr]
    participant.sent = participant.received = 0
    return participant, therapist, appointment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--speed", type=float, default=1, help="play the held chat N times faster")
    parser.add_argument("--idle-seconds", type=float, default=180, help="the idle chat's length")
    parser.add_argument(
        "--hold", type=float, default=None, help="the server's feed hold, s (its default if unset)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The timeline runs in seconds, not minutes: lift the rate limit for this run only.
        env = {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120", "STILLROOM_CHAT_RATE_MESSAGES": "1000"}
        if args.hold is not None:
            env["STILLROOM_FEED_HOLD_SECONDS"] = f"{args.hold:g}"
        server = start_server(Path(tmp) / "instance", env)
        try:
            participant, therapist, chat = set_up(server.url, server.portal_url, server.data_dir)
            figures = run_reference_chat(participant, therapist, chat)
            participant.sent = participant.received = 0
            figures.update(run_held_chat(participant, therapist, chat, args))
        finally:
            stop_server(server)
    for name, value in figures.items():
        print(f"{name}={value}")
    return 0


def refresh_of(feed: str) -> tuple[float | None, str]:
    """Return the pause a feed page asks for before its next reload (``None`` when it does
    not reload), and the address it reloads (a held feed's reload names the page it
    shows, ``?seen=``)."""
    found = re.search(r'http-equiv="refresh" content="(\d+)(?:; url=([^"]*))?"', feed)
    return (float(found.group(1)), found.group(2) or "") if found else (None, "")


def plain_interval(feed: str) -> int:
    """Return the interval of plain reloads, which the reference run replays.

    With the hold on, a page asks for a short pause and names the reload to hold
    (``?seen=``); the plain reloads it replays come at the 5 s a server without it asks.
    """
    pause, held = refresh_of(feed)
    return 5 if held or pause is None else int(pause)


class HeldFeed(threading.Thread):
    """The feed frame on its own: reload, maybe held, pause as the page says, reload again."""

    def __init__(self, browser: Browser, path: str) -> None:
        super().__init__(daemon=True)
        self.browser, self.path = browser, path
        self.query = ""
        #: As a browser's cache: each address's copy, its ETag and what its refresh asks.
        self.copies: dict[str, tuple[str, float, str]] = {}
        self.pause = 5.0
        self.answers: list[tuple[int, int]] = []  # (status, bytes)
        self.seen: dict[int, float] = {}  # message number -> when the feed first showed it
        self.stopping = threading.Event()

    def run(self) -> None:
        """Reload until told to stop, noting when each numbered message first shows."""
        while not self.stopping.is_set():
            copy = self.copies.get(self.query)
            status, headers, feed, cost = self.browser.request(
                "GET", self.path + self.query, etag=copy[0] if copy else None
            )
            now = time.monotonic()
            self.answers.append((status, cost))
            if status == 200:
                pause, query = refresh_of(feed)
                self.copies[self.query] = (
                    headers.get("etag", ""),
                    self.pause if pause is None else pause,
                    query,
                )
                for number in re.findall(r"\[(\d+)\]", feed):
                    self.seen.setdefault(int(number), now)
            if self.query in self.copies:  # the page shown: the new one, or the kept copy
                _, self.pause, self.query = self.copies[self.query]
            self.stopping.wait(self.pause)


def run_held_chat(
    participant: Browser, therapist: Browser, chat: str, args: argparse.Namespace
) -> dict[str, int]:
    """Play the reference chat in real time on the held feed; then leave it idle."""
    compose_path = f"/en/chat/{chat}/compose"
    hold_limit = (args.hold if args.hold is not None else 120) + 30
    feed_browser = Browser(
        participant.host, participant.port, participant.cookies, timeout=hold_limit
    )
    _, _, page, _ = participant.request("GET", f"/en/chat/{chat}")
    stylesheet = re.search(r'href="(/static/[^"]+)"', page).group(1)  # type: ignore[union-attr]
    participant.request("GET", stylesheet)  # counted once, as in the chat on reloads
    _, _, compose, _ = participant.request("GET", compose_path)
    _, _, t_compose, _ = therapist.request("GET", compose_path)
    feed = HeldFeed(feed_browser, f"/en/chat/{chat}/feed")
    feed.start()
    step = MINUTES * 60 // MESSAGES_EACH_WAY
    events = sorted(
        [(step * k, "participant") for k in range(MESSAGES_EACH_WAY)]
        + [(step * k + step // 2, "therapist") for k in range(MESSAGES_EACH_WAY)]
    )
    began = time.monotonic()
    sent_at: dict[int, float] = {}
    for number, (moment, who) in enumerate(events):
        time.sleep(max(0.0, began + moment / args.speed - time.monotonic()))
        if who == "participant":
            text = SAMPLE[number % len(SAMPLE)]
            status, _, compose, _ = participant.request(
                "POST", compose_path, {"form_token": form_token(compose), "text": text}
            )
            assert status == 200, compose
        else:
            text = f"{SAMPLE[number % len(SAMPLE)]} [{number}]"
            sent_at[number] = time.monotonic()
            status, _, t_compose, _ = therapist.request(
                "POST", compose_path, {"form_token": form_token(t_compose), "text": text}
            )
            assert status == 200, t_compose
    time.sleep(step / args.speed)  # the last message's delivery
    chat_bytes = participant.received + feed_browser.received
    statuses = [status for status, _ in feed.answers]
    delays = sorted((feed.seen[n] - sent) * 1000 for n, sent in sent_at.items() if n in feed.seen)
    missing = len(sent_at) - len(delays)
    print(
        f"held feed: {statuses.count(200)} pages with news, {statuses.count(304)} unchanged (304);"
        f" {len(delays)} of {len(sent_at)} of the therapist's messages seen"
        f" ({missing} missing), chat {chat_bytes} bytes received"
    )
    idle_from = len(feed.answers)
    before = feed_browser.sent + feed_browser.received
    idle_began = time.monotonic()
    time.sleep(args.idle_seconds)
    feed.stopping.set()
    idle_minutes = (time.monotonic() - idle_began) / 60
    idle_bytes = feed_browser.sent + feed_browser.received - before
    print(
        f"idle: {len(feed.answers) - idle_from} feed answers in {idle_minutes:.1f} minutes,"
        f" {idle_bytes} bytes both ways"
    )
    return {
        "held_reference_chat_bytes": chat_bytes,
        "delivery_p50_ms": round(delays[len(delays) // 2]) if delays else -1,
        "delivery_p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))])
        if delays
        else -1,
        "held_feed_idle_bytes_per_minute": round(idle_bytes / idle_minutes),
    }


def run_reference_chat(participant: Browser, therapist: Browser, chat: str) -> dict[str, int]:
    """Play the reference chat on a virtual timeline; return the participant's figures."""
    page_path, feed_path, compose_path = (
        f"/en/chat/{chat}",
        f"/en/chat/{chat}/feed",
        f"/en/chat/{chat}/compose",
    )
    _, _, page, page_bytes = participant.request("GET", page_path)
    stylesheet = re.search(r'href="(/static/[^"]+)"', page).group(1)  # type: ignore[union-attr]
    _, _, _, css_bytes = participant.request("GET", stylesheet)
    _, _, compose, compose_bytes = participant.request("GET", compose_path)
    _, headers, feed, first_feed = participant.request("GET", feed_path)
    etag = headers.get("etag")
    interval = plain_interval(feed)
    _, _, t_compose, _ = therapist.request("GET", compose_path)

    step = MINUTES * 60 // MESSAGES_EACH_WAY
    theirs = {step * k + step // 2 for k in range(MESSAGES_EACH_WAY)}
    mine = {step * k for k in range(MESSAGES_EACH_WAY)}
    idle, changed, sends = [], [], []
    clock, next_reload = 0, interval
    while clock < MINUTES * 60:
        if clock in mine:
            text = SAMPLE[len(sends) % len(SAMPLE)]
            status, _, compose, cost = participant.request(
                "POST", compose_path, {"form_token": form_token(compose), "text": text}
            )
            assert status == 200, compose
            sends.append(cost)
        if clock in theirs:
            text = SAMPLE[(len(changed) + 1) % len(SAMPLE)]
            status, _, t_compose, _ = therapist.request(
                "POST", compose_path, {"form_token": form_token(t_compose), "text": text}
            )
            assert status == 200, t_compose
        if clock == next_reload:
            status, headers, feed, cost = participant.request("GET", feed_path, etag=etag)
            if status == 304:
                idle.append(cost)
            else:
                changed.append(cost)
                etag = headers.get("etag")
                interval = plain_interval(feed)
            next_reload = clock + interval
        clock += 1
    total = participant.received
    print(
        f"chat page {page_bytes} bytes, stylesheet {css_bytes} (once, then cached),"
        f" compose frame {compose_bytes}, first feed {first_feed}"
    )
    print(f"feed reloads: {len(idle)} unchanged (304), {len(changed)} with news (200)")
    print(
        f"sent: {len(sends)} messages, {sum(sends) // len(sends)} bytes each on average"
        " (the fresh compose frame that answers each POST)"
    )
    print(f"received: {sum(changed) // max(1, len(changed))} bytes per feed page with news")
    print(
        f"participant in all: {participant.received} bytes received; its requests add"
        f" {participant.sent} bytes upstream (browser-like headers and the session cookie)"
    )
    return {
        "message_sent_bytes": sum(sends) // len(sends),
        "message_received_bytes": sum(changed) // max(1, len(changed)),
        "idle_reload_bytes": max(idle),
        "reference_chat_bytes": total,
    }


if __name__ == "__main__":
    sys.exit(main())
