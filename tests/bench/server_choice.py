"""Compare WSGI servers for the participant app: slow clients, and flask-sock WebSockets.

DESIGN §3 asks for one production server that keeps serving while many slow
clients (Tor circuits) hold connections open, and that can run flask-sock. This
starts each candidate in its own process on 127.0.0.1 and measures:

- ``p50_ms`` / ``p99_ms``: latency of ordinary page loads while ``--slow`` other
  connections trickle their request headers one byte at a time;
- ``websocket``: whether a flask-sock echo route works through that server.

    .venv/bin/pip install gunicorn waitress   # the other candidates, not dependencies
    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/server_choice.py [--slow 200]

It prints one line per server and, last, ``fastest_with_websocket=NAME``.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real import waits for gevent's patching
    from flask import Flask

CANDIDATES = ("waitress", "gunicorn-gthread", "gevent")


def build_app(data_dir: Path) -> Flask:
    """The real participant app plus a flask-sock echo route for the WebSocket check."""
    from flask_sock import Sock

    from stillroom.crypto.kdf import FAST_FOR_TESTS
    from stillroom.webapp.app import create_participant_app
    from stillroom.webapp.settings import Settings

    settings = Settings.load(
        {},
        data_dir=data_dir,
        argon2_time_cost=FAST_FOR_TESTS.time_cost,
        argon2_memory_kib=FAST_FOR_TESTS.memory_kib,
        argon2_parallelism=FAST_FOR_TESTS.parallelism,
    )
    app = create_participant_app(settings)
    sock = Sock(app)

    @sock.route("/echo")
    def echo(ws):
        ws.send(ws.receive())

    return app


def serve(name: str, port: int, data_dir: Path) -> None:
    """Run one candidate server in this process (the child side).

    Imports happen here, after gevent's monkey-patching where that applies.
    """
    if name == "gevent":
        from gevent import monkey

        monkey.patch_all()
        from gevent.pywsgi import WSGIServer

        WSGIServer(("127.0.0.1", port), build_app(data_dir), log=None).serve_forever()
    elif name == "waitress":
        import waitress

        from stillroom.webapp.cli import CONNECTION_LIMIT

        # As `stillroom serve` runs it.
        waitress.serve(
            build_app(data_dir),
            host="127.0.0.1",
            port=port,
            threads=8,
            ident="",
            connection_limit=CONNECTION_LIMIT,
        )
    else:
        from gunicorn.app.base import BaseApplication

        class Runner(BaseApplication):
            def load_config(self) -> None:
                for key, value in {
                    "bind": f"127.0.0.1:{port}",
                    "workers": 1,
                    "worker_class": "gthread",
                    "threads": 32,
                    "accesslog": None,
                }.items():
                    self.cfg.set(key, value)

            def load(self):
                return build_app(data_dir)

        Runner().run()


def get(port: int, path: str = "/en/", timeout: float = 5) -> float:
    """Load one page and return the seconds it took (a timeout raises OSError)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        while conn.recv(65536):
            pass
    return time.perf_counter() - started


def websocket_works(port: int) -> bool:
    """Open a WebSocket to /echo by hand and check that a text frame comes back."""
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(
                (
                    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = conn.recv(4096)
            if not head.startswith(b"HTTP/1.1 101"):
                return False
            mask = os.urandom(4)
            payload = b"ping"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            conn.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            reply = conn.recv(4096)
            return reply[2:6] == payload
    except OSError:
        return False


def trickle(port: int, stop: threading.Event) -> None:
    """Hold a connection open, sending the request one byte every 0.2 s (a slow circuit)."""
    request = b"GET /en/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            for byte in request:
                if stop.wait(0.2):
                    return
                conn.sendall(bytes([byte]))
    except OSError:
        return


def measure(name: str, slow: int, pages: int) -> dict[str, object]:
    """Start ``name`` in a child process and measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", name, str(port), tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    get(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            stop = threading.Event()
            holders = [threading.Thread(target=trickle, args=(port, stop)) for _ in range(slow)]
            for holder in holders:
                holder.start()
            time.sleep(2)  # let the slow connections take their places
            latencies = []
            for _ in range(pages):
                try:
                    latencies.append(get(port))
                except OSError:
                    latencies.append(5.0)  # counted as the timeout
            stop.set()
            for holder in holders:
                holder.join(timeout=10)
            latencies.sort()
            return {
                "server": name,
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
                "websocket": websocket_works(port),
            }
        finally:
            child.terminate()
            child.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections held open")
    parser.add_argument("--pages", type=int, default=30, help="page loads measured")
    parser.add_argument("--only", choices=CANDIDATES, help="measure one server")
    parser.add_argument("--serve", nargs=3, metavar=("NAME", "PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        name, port, data_dir = args.serve
        serve(name, int(port), Path(data_dir) / "instance")
        return 0
    results = []
    for name in [args.only] if args.only else CANDIDATES:
        results.append(measure(name, args.slow, args.pages))
        print(" ".join(f"{key}={value}" for key, value in results[-1].items()), flush=True)
    usable = [r for r in results if r["websocket"]]
    best = min(usable, key=lambda r: r["p99_ms"])["server"] if usable else "none"
    print(f"fastest_with_websocket={best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
