"""A login flood with production argon2id, while chats go on: crashes, memory, latency.

Starts ``stillroom serve --no-tor`` with the production argon2id costs (64 MiB, t=3,
p=4) and its default of 2 derivations at once, then, all at once:

* ``--logins`` participants log in with their real passphrases, every one at the same
  moment (a wrong passphrase would cost no argon2: the flood uses right ones);
* ``--readers`` no-JS chat clients (over ``--pairs`` logged-in chats) go on reloading
  their feed every ``--interval`` seconds, as they would during an attack.

It reports how the logins ended (logged in, or the small "busy" page: 503), their
latency, the feed's latency during the flood, and the server's peak memory against the
bound the semaphore sets: (ARGON2_CONCURRENCY + 1) x 64 MiB over the idle server.
Accounts are made in this process beforehand, with the same production costs.

Prints the figures and, last,
``logins=N logged_in=N busy=N crashed=0|1 feed_p99_ms=X feed_errors=N rss_mb=X rss_bound_mb=X``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/login_flood.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers

from loadclients import (
    Connection,
    create_accounts,
    create_chats,
    form_token,
    log_in,
    peak_rss_mb,
    percentile,
)

from stillroom.crypto.kdf import PRODUCTION
from stillroom.webapp.settings import Settings

from support import argon2_env, start_server, stop_server


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0]) / 1024


async def one_login(port: int, token: str, passphrase: str) -> tuple[int, float]:
    """Log in once with the form; return the status and the seconds it took."""
    connection = Connection(port)
    started = time.monotonic()
    status, _, _ = await connection.request(
        "POST", "/en/login", form={"form_token": token, "passphrase": passphrase}
    )
    if connection.writer is not None:
        connection.writer.close()
    return status, time.monotonic() - started


async def reader(port: int, cookie: str, feed: str, interval: float, stop: float, out: list):
    """Reload one feed every ``interval`` seconds until ``stop``; keep each latency."""
    connection = Connection(port)
    etag = ""
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < stop:
        started = time.monotonic()
        status, headers, _ = await connection.request("GET", feed, cookie, etag=etag)
        out.append(((time.monotonic() - started) * 1000, status))
        etag = headers.get("etag", etag)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def flood(server_pid: int, ports: tuple[int, int], passphrases, chats, args) -> dict:
    participant_port, portal_port = ports
    for chat in chats:
        await log_in(chat, participant_port, portal_port)
    idle_rss = rss_mb(server_pid)
    door = Connection(participant_port)
    _, _, page = await door.request("GET", "/en/login")
    token = form_token(page)  # a token before login is bound to no session: all may use it
    stop = time.monotonic() + args.seconds
    latencies: list = []
    readers = [
        asyncio.ensure_future(
            reader(
                participant_port,
                chats[number % len(chats)].participant_cookie,
                f"/en/chat/{chats[number % len(chats)].appointment}/feed",
                args.interval,
                stop,
                latencies,
            )
        )
        for number in range(args.readers)
    ]
    await asyncio.sleep(args.interval)  # the readers are in their stride
    before_flood = len(latencies)
    peak = [idle_rss]

    async def watch() -> None:
        while time.monotonic() < stop:
            peak[0] = max(peak[0], rss_mb(server_pid))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    began = time.monotonic()
    results = await asyncio.gather(
        *(one_login(participant_port, token, passphrase) for passphrase in passphrases),
        return_exceptions=True,
    )
    flood_seconds = time.monotonic() - began
    during = [ms for ms, _ in latencies[before_flood:]]
    await asyncio.gather(*readers, watcher, return_exceptions=True)
    return {
        "results": results,
        "flood_seconds": flood_seconds,
        "during": during,
        "feed_errors": sum(1 for _, status in latencies if status not in (200, 304)),
        "idle_rss": idle_rss,
        "peak_rss": peak[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--logins", type=int, default=100)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0, help="feed reload interval, s")
    parser.add_argument("--seconds", type=float, default=40, help="how long the readers read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "instance"
        env = {
            "STILLROOM_DATA_DIR": str(data_dir),
            "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
        }
        os.environ.update(env)
        began = time.monotonic()
        chats = create_chats(args.pairs, Settings.load())
        passphrases = create_accounts(args.logins)
        print(
            f"made {args.pairs} chats and {args.logins} accounts with production argon2id,"
            f" {time.monotonic() - began:.0f} s",
            flush=True,
        )
        # The server runs the production costs: no argon2 settings in its environment.
        server = start_server(data_dir, {**env, **argon2_env(PRODUCTION)})
        crashed = 0
        try:
            ports = (int(server.url.rsplit(":", 1)[1]), int(server.portal_url.rsplit(":", 1)[1]))
            found = asyncio.run(flood(server.process.pid, ports, passphrases, chats, args))
            crashed = int(server.process.poll() is not None)
            hwm = peak_rss_mb(server.process.pid) if not crashed else float("nan")
        finally:
            stop_server(server)
    statuses = [r[0] if isinstance(r, tuple) else repr(r) for r in found["results"]]
    seconds = sorted(r[1] for r in found["results"] if isinstance(r, tuple))
    logged_in, busy = statuses.count(302), statuses.count(503)
    bound = found["idle_rss"] + (2 + 1) * 64
    print(
        f"logins: {len(statuses)} at once, {logged_in} logged in, {busy} busy (503),"
        f" other: {[s for s in statuses if s not in (302, 503)]};"
        f" all answered in {found['flood_seconds']:.1f} s;"
        f" login p50 {percentile(seconds, 0.5):.2f} s, p99 {percentile(seconds, 0.99):.2f} s"
    )
    print(
        f"feed reloads during the flood: {len(found['during'])}, p50"
        f" {percentile(found['during'], 0.5):.1f} ms,"
        f" p99 {percentile(found['during'], 0.99):.1f} ms;"
        f" feed errors {found['feed_errors']}"
    )
    print(
        f"server memory: idle {found['idle_rss']:.0f} MB, peak during the flood"
        f" {found['peak_rss']:.0f} MB (VmHWM {hwm:.0f} MB), bound {bound:.0f} MB"
    )
    print(
        f"logins={len(statuses)} logged_in={logged_in} busy={busy} crashed={crashed}"
        f" feed_p99_ms={percentile(found['during'], 0.99):.1f} feed_errors={found['feed_errors']}"
        f" rss_mb={found['peak_rss']:.0f}"
        f" rss_bound_mb={bound:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
