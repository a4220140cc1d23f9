"""Stops the summary model while the chats are busy, so that a draft never slows them.

The model's process runs in the idle class (:mod:`stillroom.webapp.assist.llama`): the
scheduler gives it only CPU time that nothing else asks for. On a 2-core server it still
runs beside the chats, and in the full-load benchmark (``tests/bench/chat_load.py
--assist``) a draft being written cost them seconds at p99 (figures in
``docs/benchmarks.md``). So serve watches its own event loop, which answers every chat:
when a turn of it comes late, the chats are waiting, and the model's process is stopped
(``SIGSTOP``); it goes on (``SIGCONT``) once the loop has kept time for a while.

A stop lasts at most :data:`LONGEST_STOP_SECONDS` (less when drafts may take less than
three times that), then the model runs a moment: the portal's draft gives up on a model
that writes nothing for its whole read timeout, 40 s or more by default
(:func:`stillroom.webapp.assist.model.stream_draft`). Under a load that never eases, a
draft so goes on slowly, and may stop unfinished, when the model wrote nothing within
that timeout or at the draft's deadline; its page says that both may happen. Only a
model that serve started can be stopped; one the operator runs at
``STILLROOM_ASSIST_MODEL_ADDRESS`` is theirs to place.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time

import gevent

from stillroom.webapp.assist.keeper import Keeper

log = logging.getLogger(__name__)

#: How often the event loop's timekeeping is checked.
TICK_SECONDS = 0.1
#: A turn this much later than asked means the chats are waiting for the loop.
BUSY_LAG_SECONDS = 0.02
#: How long the loop must keep time before the model goes on.
CALM_SECONDS = 2.0
#: The longest the model stays stopped at a stretch (see the module's docstring).
LONGEST_STOP_SECONDS = 15.0
#: Of a draft's whole time (STILLROOM_ASSIST_DRAFT_SECONDS), the most one stop may take.
LONGEST_STOP_SHARE = 1 / 3
#: How long the model then runs before it may be stopped again.
SHORTEST_RUN_SECONDS = 1.0


class ModelPause:
    """Stops and resumes the process that ``keeper`` runs, following the event loop's lag."""

    def __init__(self, keeper: Keeper, draft_seconds: float = 600.0) -> None:
        """:param keeper: keeps the model's process running (it may restart it).
        :param draft_seconds: the longest a draft may take (a stop takes a third at most).
        """
        self.keeper = keeper
        self.longest_stop = min(LONGEST_STOP_SECONDS, draft_seconds * LONGEST_STOP_SHARE)
        self.stopped_pid: int | None = None
        self.stopped_at = 0.0
        self.calm_since = time.monotonic()
        self.may_stop_at = 0.0
        self.stops = 0
        self._greenlet: gevent.Greenlet[None] | None = None

    def tick(self, lag: float, now: float) -> None:
        """Stop or resume the model after one turn of the loop that came ``lag`` seconds late.

        :param now: the time of the turn (``time.monotonic()``).
        """
        process = self.keeper.process
        pid = process.pid if process is not None and process.poll() is None else None
        if self.stopped_pid != pid:
            self.stopped_pid = None  # it ended or was restarted: the new one was never stopped
        if lag > BUSY_LAG_SECONDS:
            self.calm_since = now
        if self.stopped_pid is None:
            if lag > BUSY_LAG_SECONDS and process is not None and pid and now >= self.may_stop_at:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGSTOP)
                self.stopped_pid, self.stopped_at = pid, now
                self.stops += 1
        elif now - self.calm_since >= CALM_SECONDS:
            self.resume()
        elif now - self.stopped_at >= self.longest_stop:
            self.resume()
            self.may_stop_at = now + SHORTEST_RUN_SECONDS

    def resume(self) -> None:
        """Let the model's process go on, if it was stopped."""
        process = self.keeper.process
        if self.stopped_pid is not None and process is not None and process.pid == self.stopped_pid:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
        self.stopped_pid = None

    def watch(self) -> None:
        """Measure the loop's lateness every :data:`TICK_SECONDS` and act on it, until killed.

        A failure lets the model go on and ends the watching (the operator is told): a
        model left stopped would fail every draft.
        """
        try:
            while True:
                asked = time.monotonic()
                gevent.sleep(TICK_SECONDS)
                now = time.monotonic()
                self.tick(now - asked - TICK_SECONDS, now)
        except Exception:
            log.exception("pausing the summary model failed; it now runs beside the chats")
            self.resume()

    def start(self) -> ModelPause:
        """Start watching in serve's event loop; return self."""
        self._greenlet = gevent.spawn(self.watch)
        return self

    def stop(self) -> None:
        """Stop watching and let the model go on (it must run to end when serve stops it)."""
        if self._greenlet is not None:
            self._greenlet.kill()
        self.resume()
