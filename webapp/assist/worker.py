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
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stillroom.webapp.assist.keeper import Keeper, describe_end
from stillroom.webapp.assist.service import Assist, AssistError, load_assist, socket_path
from stillroom.webapp.settings import Settings, SettingsError

#: Exit status when the settings name something the support cannot load.
BAD_SETTINGS = 2
#: Exit status when another process answers on the socket, or it was removed or replaced.
SOCKET_TAKEN = 3
#: The longest request line read, in bytes: far above a draft's whole session.
MAX_REQUEST = 4 * 1024 * 1024
#: How long serve waits for the worker's first start: embedding the snippets and phrases
#: with no cache takes a minute or more on 2 cores.
START_SECONDS = 600.0
#: How long the portal waits for a panel's answer when a request does not say.
DEFAULT_SECONDS = 10.0


def answer(assist: Assist, request: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Answer one request of the portal: ``related``, ``topics`` or ``snippet``.

    :raises TimeoutError: when a whole chat's check outlasts the portal's wait.
    """
    operation = request.get("op")
    if operation == "related":
        found = assist.related(request["messages"], request["lang"])
        return {"snippets": [[s.key, s.lang, s.title, s.text] for s in found]}
    if operation == "topics":
        whole = bool(request.get("whole"))
        return {"topics": assist.topics(request["messages"], whole, deadline)}
    if operation == "snippet":
        return {"text": assist.snippet_text(request["key"], request["lang"])}
    raise ValueError("unknown request")


def gone(connection: socket.socket) -> bool:
    """Whether the portal hung up (it stopped waiting): its request is not worth the work."""
    readable, _, _ = select.select([connection], [], [], 0)
    return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""


def handle(assist: Assist, connection: socket.socket) -> None:
    """Read one request line, write one answer line; a failed request gets an error.

    Only the kind of failure is printed: its message could quote a participant's words.
    """
    began = time.monotonic()
    with connection, connection.makefile("rwb") as stream:
        line = stream.readline(MAX_REQUEST)
        if gone(connection):
            return
        try:
            request = json.loads(line)
            seconds = min(float(request.get("seconds", DEFAULT_SECONDS)), DEFAULT_SECONDS * 6)
            reply = answer(assist, request, began + seconds)
        except Exception as error:  # one bad request must not stop the panels
            print(f"therapist support: a request failed ({type(error).__name__})", file=sys.stderr)
            reply = {"error": "bad request"}
        stream.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        stream.flush()


def listening_elsewhere(path: Path) -> bool:
    """Whether a process already answers on ``path`` (a worker run by hand, or a stranger)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def serve_requests(assist: Assist, path: Path) -> int:
    """Answer the portal's requests one at a time until the parent process ends; return an
    exit status (:data:`SOCKET_TAKEN` when the socket is someone else's or was replaced)."""
    if path.is_socket() and listening_elsewhere(path):
        print(f"another process already answers on {path}: stop it", file=sys.stderr, flush=True)
        return SOCKET_TAKEN
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket left by a worker that was killed
    os.umask(0o077)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    listener.settimeout(1.0)
    mine = path.lstat().st_ino
    parent = os.getppid()
    while os.getppid() == parent:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            try:
                if path.lstat().st_ino != mine:
                    raise FileNotFoundError
            except FileNotFoundError:  # the portal could no longer reach this process
                print(f"{path} was removed or replaced", file=sys.stderr, flush=True)
                return SOCKET_TAKEN
            continue
        connection.settimeout(30)
        with contextlib.suppress(OSError):  # the portal gave up waiting: serve the next one
            handle(assist, connection)
    return 0


def run(settings: Settings) -> int:
    """Load what the features need and serve it; return an exit status."""
    os.setpriority(os.PRIO_PROCESS, 0, 15)  # below the chats and the logins' argon2
    # In the idle class it runs only on a core that the chats and logins leave free: at
    # nice 15 beside 1,500 chats it still cost their deliveries seconds at p99.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # serve stops it, with SIGTERM
    try:
        assist = load_assist(settings, in_this_process=True)
    except (AssistError, SettingsError) as error:
        print(error, file=sys.stderr, flush=True)  # one line: serve shows it and stops
        return BAD_SETTINGS
    if not isinstance(assist, Assist):  # no feature on
        return 0
    return serve_requests(assist, socket_path(settings))


def main(argv: list[str] | None = None) -> None:
    """Run the worker (started by ``stillroom serve``, with serve's environment)."""
    argparse.ArgumentParser(prog="python -m stillroom.webapp.assist.worker").parse_args(argv)
    sys.exit(run(Settings.load()))


def describe_status(status: int) -> str:
    """Say in words how the support process ended."""
    return describe_end(
        status,
        {
            BAD_SETTINGS: "a STILLROOM_ASSIST setting names something it cannot load: see the"
            " line above",
            SOCKET_TAKEN: "its socket was taken, removed or replaced: see the line above",
        },
    )


def keeper(settings: Settings) -> Keeper | None:
    """Return the keeper of serve's support process, when a feature needs one.

    Its one line on a bad setting goes to serve's output; it writes nothing else.
    """
    if not ({"related", "risk", "summary"} & set(settings.assist_features)):
        return None
    command = [sys.executable, "-m", "stillroom.webapp.assist.worker"]
    return Keeper("therapist support", command, describe_status, quiet=False)


def wait_until_listening(path: Path, seconds: float, alive: Callable[[], bool]) -> bool:
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
