"""What one idle reload costs the production server before any of Stillroom's code runs.

Starts gevent's WSGI server, as ``stillroom serve`` uses it, with an application that
answers every request with a bare ``304`` and does nothing else, on 127.0.0.1. Then
``--clients`` keep-alive connections each send a feed reload as Tor Browser does
(its headers, the session cookie, ``If-None-Match``) every ``--interval`` seconds,
as idle held feeds do, and the server process's own CPU time (``/proc/PID/stat``)
is divided by the answers.

This is the floor under ``idle_held_cpu_ms_per_min`` in ``chat_load.py``: at a reload
a minute per participant the event loop, the sockets and the HTTP parsing are all
there is to measure, and their cost per request is far higher at a few dozen requests
a second (cold caches) than when a benchmark hammers the server.

Prints ``floor_us_per_request=X floor_ms_per_participant_minute=X`` (the latter for
one reload per ``--interval`` seconds).

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/server_floor.py
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/server_floor.py --clients 20 --interval 0.001
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

#: A reload of the feed frame as Tor Browser sends it (header names and sizes).
RELOAD = (
    b"GET /en/chat/aaaaaaaaaaaaaaaaaaaaaa/feed?seen=abcdefgh HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"User-Agent: Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Sec-Fetch-Dest: iframe\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
    b'If-None-Match: "abcdefgh"\r\n'
    b"Cookie: stillroom=" + b"x" * 43 + b"\r\n"
    b"Connection: keep-alive\r\n\r\n"
)


def serve(listener: socket.socket) -> None:
    """Answer every request with a bare 304, on gevent's WSGI server (in a child process)."""
    from gevent import monkey

    monkey.patch_all()
    from gevent.pywsgi import WSGIServer

    def not_modified(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("304 Not Modified", [("ETag", '"abcdefgh"')])
        return [b""]

    WSGIServer(listener, not_modified, log=None, error_log=None).serve_forever()


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def reload_every(port: int, interval: float, starts: float, ends: float) -> int:
    """Reload every ``interval`` seconds on one keep-alive connection; count the answers
    that fall inside the window."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(random.uniform(0, interval))  # clients do not move in step
    answers = 0
    while time.monotonic() < ends:
        writer.write(RELOAD)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        answers += starts <= time.monotonic() < ends
        await asyncio.sleep(interval)
    writer.close()
    return answers


async def measure(pid: int, port: int, args: argparse.Namespace) -> tuple[float, int]:
    """Run the clients; return the server's CPU seconds inside the window and the answers."""
    starts = time.monotonic() + min(args.interval, 60) + 1  # every client has begun
    ends = starts + args.seconds
    clients = [
        asyncio.ensure_future(reload_every(port, args.interval, starts, ends))
        for _ in range(args.clients)
    ]
    await asyncio.sleep(starts - time.monotonic())
    before = cpu_seconds(pid)
    await asyncio.sleep(ends - time.monotonic())
    cpu = cpu_seconds(pid) - before
    return cpu, sum(await asyncio.gather(*clients))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000, help="idle feeds")
    parser.add_argument("--interval", type=float, default=55, help="seconds between reloads")
    parser.add_argument("--seconds", type=float, default=120, help="the measured window")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(target=serve, args=(listener,))
    server.start()
    try:
        time.sleep(1)
        cpu, answers = asyncio.run(measure(server.pid, port, args))  # type: ignore[arg-type]
    finally:
        server.terminate()
        server.join()
    per_request = cpu / max(1, answers) * 1e6
    per_minute = per_request / 1000 * 60 / args.interval
    print(
        f"{answers} answers from {args.clients} connections, one every {args.interval:g} s each,"
        f" {cpu * 1000:.0f} ms of server CPU"
    )
    print(
        f"floor_us_per_request={per_request:.0f} floor_ms_per_participant_minute={per_minute:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
