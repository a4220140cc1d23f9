"""Keeps one of serve's helper processes running: starts it, restarts it with a growing pause.

Therapist support runs two of them, never inside the web server: the summary model
(:mod:`stillroom.webapp.assist.llama`) and the panel's embedding work
(:mod:`stillroom.webapp.assist.worker`). Their failures are logged for the operator and
never reach the apps: a page then finds no answer and says so calmly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def describe_end(status: int, meanings: dict[int, str], killed: str = "") -> str:
    """Say in words how a helper process ended: ``meanings`` of its own exit statuses,
    ``killed`` added to a death by signal."""
    if status in meanings:
        return meanings[status]
    if status < 0:
        return f"killed by signal {-status}{killed}"
    return f"exit status {status}"


class Keeper:
    """Runs ``command`` again each time it ends, until :meth:`stop`."""

    #: Pauses before a restart grow from the first to the longest, doubling each time,
    #: and start again from the first once a process has run for :data:`HEALTHY_SECONDS`.
    LONGEST_PAUSE = 60.0
    HEALTHY_SECONDS = 60.0

    def __init__(
        self,
        name: str,
        command: list[str],
        describe: Callable[[int], str],
        first_pause: float = 1.0,
        quiet: bool = True,
    ) -> None:
        """:param quiet: throw the process's output away (a model may quote a prompt)."""
        self.name = name
        self.command = command
        self.describe = describe
        self.first_pause = first_pause
        self.quiet = quiet
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep_running, daemon=True)

    def start(self) -> None:
        """Start the process, and watch it from now on."""
        self._thread.start()

    def first_is_running(self) -> bool:
        """Whether the first process is starting or running (not ended, not replaced)."""
        process = self.process
        return self.starts <= 1 and (process is None or process.poll() is None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and the watching."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a stopped process ends only once it goes on
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout)

    def _keep_running(self) -> None:
        pause = self.first_pause
        while not self._stopping.is_set():
            began = time.monotonic()
            status = self._run_once()
            if self._stopping.is_set():
                return
            if time.monotonic() - began >= self.HEALTHY_SECONDS:
                pause = self.first_pause
            log.warning(
                "the %s process ended (%s); restarting in %.0f s",
                self.name,
                self.describe(status),
                pause,
            )
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, self.LONGEST_PAUSE)

    def _run_once(self) -> int:
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        output = subprocess.DEVNULL if self.quiet else None
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env,
            close_fds=True,
        )
        self.starts += 1
        return self.process.wait()
