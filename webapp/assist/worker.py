"""Therapist support's own process: the embedding model, the snippet library and the risk
detector, answering the portal over a unix socket in the data directory.

The portal serves every chat from one event loop and a few database connections. Done in
the portal's own threads, 1,000 panels (``tests/bench/chat_load.py --assist``) took its
CPU and about 145 MB of its memory, and panels waiting for an answer held connections the
chats needed: deliveries took 33 s at p99. Here the work runs at low priority in a process
of its own, and the portal gives its connection back before it asks.

One request per connection, one JSON line each way. A participant's messages cross the
socket and live in this process's memory for one lookup; nothing is written or logged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stillroom.webapp.assist.keeper import Keeper
from stillroom.webapp.assist.service import AssistError, Support, load_assist
from stillroom.webapp.settings import Settings, SettingsError

#: The worker's socket, in the data directory (0600: only the service's user connects).
SOCKET_FILE = "assist-worker.sock"
#: Exit status when the settings name something the support cannot load.
BAD_SETTINGS = 2
#: The longest request line read, in bytes: far above a draft's whole session.
MAX_REQUEST = 4 * 1024 * 1024


def socket_path(settings: Settings) -> Path:
    """Return where the worker listens."""
    return settings.data_dir / SOCKET_FILE


def answer(assist: Support, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request of the portal: ``related``, ``topics`` or ``snippet``."""
    operation = request.get("op")
    if operation == "related":
        found = assist.related(request["messages"], request["lang"])
        return {"snippets": [[s.key, s.lang, s.title, s.text] for s in found]}
    if operation == "topics":
        return {"topics": assist.topics(request["messages"], bool(request.get("whole")))}
    if operation == "snippet":
        return {"text": assist.snippet_text(request["key"], request["lang"])}
    raise ValueError("unknown request")


def handle(assist: Support, connection: socket.socket) -> None:
    """Read one request line, write one answer line; a malformed request gets an error."""
    with connection, connection.makefile("rwb") as stream:
        line = stream.readline(MAX_REQUEST)
        try:
            reply = answer(assist, json.loads(line))
        except (ValueError, KeyError, TypeError):
            reply = {"error": "bad request"}
        stream.write(json.dumps(reply).encode() + b"\n")
        stream.flush()


def serve_requests(assist: Support, path: Path) -> None:
    """Answer the portal's requests one at a time until the parent process ends."""
    if path.is_socket():
        path.unlink()  # left by a worker that was killed
    os.umask(0o077)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    listener.settimeout(1.0)
    parent = os.getppid()
    while os.getppid() == parent:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.settimeout(30)
        with contextlib.suppress(OSError):  # the portal gave up waiting: serve the next one
            handle(assist, connection)


def run(settings: Settings) -> int:
    """Load what the features need and serve it; return an exit status."""
    os.setpriority(os.PRIO_PROCESS, 0, 15)  # below the chats and the logins' argon2
    try:
        assist = load_assist(settings, in_this_process=True)
    except (AssistError, SettingsError) as error:
        print(error, file=sys.stderr, flush=True)  # one line: serve shows it and stops
        return BAD_SETTINGS
    if assist is None:
        return 0
    serve_requests(assist, socket_path(settings))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run the worker (started by ``stillroom serve``, with serve's environment)."""
    argparse.ArgumentParser(prog="python -m stillroom.webapp.assist.worker").parse_args(argv)
    sys.exit(run(Settings.load()))


def describe_status(status: int) -> str:
    """Say in words how the support process ended."""
    if status == BAD_SETTINGS:
        return "a STILLROOM_ASSIST setting names something it cannot load: see the line above"
    if status < 0:
        return f"killed by signal {-status}"
    return f"exit status {status}"


def keeper(settings: Settings) -> Keeper | None:
    """Return the keeper of serve's support process, when a feature needs one.

    Its one line on a bad setting goes to serve's output; it writes nothing else.
    """
    if not ({"related", "risk", "summary"} & set(settings.assist_features)):
        return None
    command = [sys.executable, "-m", "stillroom.webapp.assist.worker"]
    return Keeper("therapist support", command, describe_status, quiet=False)


def wait_until_listening(path: Path, seconds: float, alive: Any) -> bool:
    """Wait until the worker accepts connections on ``path`` (False if ``alive()`` ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return True
            except OSError:
                threading.Event().wait(0.2)
    return False


if __name__ == "__main__":
    main()
