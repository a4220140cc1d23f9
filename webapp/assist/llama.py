"""The summary model's own process: llama.cpp's server (from the xllamacpp wheel) on a socket.

llama.cpp runs inside the process that loads it, and a malformed model file can crash
that process, so it never runs inside the web server: ``stillroom serve`` starts
``python -m stillroom.webapp.assist.llama`` and restarts it when it ends
(:class:`Supervisor`). The process runs in the idle class at nice 19, and serve stops it
while the chats are busy (:mod:`stillroom.webapp.assist.pause`); it listens on a unix
socket in the data directory that only the service's user can reach, with an API key
from a file made by Stillroom, and it prints nothing: its output is thrown away, because
a model's messages may quote a prompt, and a prompt is a participant's words.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path

from stillroom.crypto.keys import random_bytes
from stillroom.webapp.assist.keeper import Keeper, describe_end
from stillroom.webapp.settings import Settings, SettingsError

#: The socket serve's model process listens on, inside the data directory.
SOCKET_FILE = "assist-model.sock"
#: The API key both sides read (random, 0600, made by Stillroom).
KEY_FILE = "assist-model.key"
#: Tokens of context: a long session's transcript (about 6,000 words) and its draft.
CONTEXT_TOKENS = 16384
#: Most tokens one draft may write.
DRAFT_TOKENS = 1024
#: Exit status when the model file cannot be read or is not a GGUF file.
BAD_MODEL = 3
#: Exit status when llama.cpp refused to load the model.
LOAD_FAILED = 4
#: prctl's option that sends this process a signal when its parent ends (Linux).
PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def socket_path(settings: Settings) -> Path:
    """Return the socket serve's model process listens on (absolute)."""
    return settings.data_dir.absolute() / SOCKET_FILE


def read_or_create_key(data_dir: Path) -> str:
    """Return the model's API key, creating its file (0600) with a random key if needed."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(random_bytes(32).hex())
    return path.read_text(encoding="ascii").strip()


def check_model_file(path: Path) -> str | None:
    """Return why ``path`` cannot be a GGUF model, or ``None`` when it may be one."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        return f"STILLROOM_ASSIST_MODEL={path}: {error.strerror or error}"
    if magic != b"GGUF":
        return f"STILLROOM_ASSIST_MODEL={path} is not a GGUF model file"
    return None


def run_server(model: Path, socket: Path, key_file: Path, threads: int, parent: int) -> int:
    """Serve ``model`` on ``socket`` until process ``parent`` (serve) ends; return its status."""
    os.setpriority(os.PRIO_PROCESS, 0, 19)  # before loading: the load itself is heavy
    # Nice 19 still takes a share of a busy core; an idle-class process (and the threads
    # llama.cpp starts from it) runs only on a core nothing else wants.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    end_with_parent()
    if os.getppid() != parent:  # serve ended before the kernel could be told
        return 0
    if check_model_file(model):
        return BAD_MODEL
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.n_ctx = CONTEXT_TOKENS
    params.n_predict = DRAFT_TOKENS
    params.n_parallel = 1  # one draft at a time; others wait their turn
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = [str(socket)]  # a path ending in .sock: a unix socket
    params.api_keys = [key_file.read_text(encoding="ascii").strip()]
    params.endpoint_slots = False  # would show the last prompt's tokens
    params.endpoint_props = False  # no changing the server's settings from outside
    params.endpoint_metrics = False
    params.cache_ram_mib = 0  # no copies of earlier prompts kept in memory
    params.ui = False
    params.verbosity = -1
    if stat.S_ISSOCK(socket.lstat().st_mode if socket.exists() else 0):
        socket.unlink()  # left by a process that was killed
    # llama.cpp makes its socket with the process's umask (0755 by default): only this
    # user may connect, and the audit says so.
    os.umask(0o077)
    try:
        server = xllamacpp.Server(params)
    except RuntimeError:
        return LOAD_FAILED
    while os.getppid() == parent:  # the server lives in its own threads; end with serve
        time.sleep(1)
    del server
    return 0


def end_with_parent() -> None:
    """Have the kernel kill this process when serve ends, even while serve has it stopped.

    Serve stops the model while the chats are busy (:mod:`stillroom.webapp.assist.pause`);
    a stopped process cannot notice that serve was killed, and would be left behind. The
    kernel sends the signal when the *thread* that started this process ends: serve starts
    it from its main thread (gevent's threads are greenlets there), and a :class:`Keeper`
    run in a real thread keeps that thread for all its restarts.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str] | None = None) -> None:
    """Run the model server (started by ``stillroom serve``; see :class:`Supervisor`)."""
    parser = argparse.ArgumentParser(prog="python -m stillroom.webapp.assist.llama")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent", type=int, required=True, help="serve's process id")
    args = parser.parse_args(argv)
    sys.exit(run_server(args.model, args.socket, args.key_file, args.threads, args.parent))


class Supervisor(Keeper):
    """Keeps serve's model process running (see :class:`Keeper`).

    Its failures are logged for the operator and never reach the web server: a draft
    then finds no model and the therapist reads a calm message.
    """

    def __init__(self, settings: Settings, first_pause: float = 1.0) -> None:
        """Check the settings now, so that serve refuses a model it cannot start.

        :raises SettingsError: when no model file is set, or it is not a GGUF file.
        """
        if settings.assist_model == Path(""):
            raise SettingsError(
                "STILLROOM_ASSIST=summary needs STILLROOM_ASSIST_MODEL (a GGUF model file), or"
                " STILLROOM_ASSIST_MODEL_ADDRESS for a model server you run yourself"
            )
        problem = check_model_file(settings.assist_model)
        if problem:
            raise SettingsError(problem)
        self.socket = socket_path(settings)
        if len(os.fsencode(self.socket)) > 107:
            raise SettingsError(
                f"{self.socket} is too long for a unix socket: choose a shorter"
                " STILLROOM_DATA_DIR, or run the model yourself (STILLROOM_ASSIST_MODEL_ADDRESS)"
            )
        self.key_file = settings.data_dir / KEY_FILE
        read_or_create_key(settings.data_dir)
        command = [
            sys.executable,
            "-m",
            "stillroom.webapp.assist.llama",
            "--model",
            str(settings.assist_model.absolute()),
            "--socket",
            str(self.socket),
            "--key-file",
            str(self.key_file.absolute()),
            "--threads",
            str(settings.assist_model_threads),
            "--parent",
            str(os.getpid()),
        ]
        super().__init__("summary model", command, describe_status, first_pause)


def describe_status(status: int) -> str:
    """Say in words how the model process ended, and what the operator can do."""
    return describe_end(
        status,
        {
            BAD_MODEL: "STILLROOM_ASSIST_MODEL cannot be read or is not a GGUF file",
            LOAD_FAILED: "llama.cpp could not load STILLROOM_ASSIST_MODEL: check that it is a"
            " complete model",
        },
        "; a malformed model file can cause this",
    )


if __name__ == "__main__":
    main()
