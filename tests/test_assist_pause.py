"""A draft never slows the chats: serve stops the model's process while its loop runs late.

These use real processes and real signals; the state each process is in is read from
``/proc``, as an operator's ``ps`` would show it.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import gevent

from stillroom.webapp.assist.keeper import Keeper
from stillroom.webapp.assist.pause import (
    CALM_SECONDS,
    LONGEST_STOP_SECONDS,
    SHORTEST_RUN_SECONDS,
    ModelPause,
)

#: A stand-in for the model's process: it runs until it is ended.
WORKING = [sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"]
LATE = 0.5  # seconds a turn of the loop came late


def state(pid: int) -> str:
    """Return the process's state letter (``T`` when stopped), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def wait_for(check, seconds: float = 5.0) -> bool:
    """Return whether ``check()`` became true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def running_keeper() -> Keeper:
    keeper = Keeper("model stand-in", WORKING, str)
    keeper.start()
    assert wait_for(lambda: keeper.process is not None and state(keeper.process.pid) != "")
    return keeper


def test_the_model_stops_while_the_loop_runs_late_and_goes_on_once_calm() -> None:
    keeper = running_keeper()
    pause = ModelPause(keeper)
    pid = keeper.process.pid
    try:
        pause.tick(0.001, 100.0)
        assert state(pid) != "T"  # the loop keeps time: the draft runs
        pause.tick(LATE, 100.1)
        assert wait_for(lambda: state(pid) == "T")
        pause.tick(0.001, 100.1 + CALM_SECONDS / 2)
        assert state(pid) == "T"  # not calm for long enough yet
        pause.tick(LATE, 100.2 + CALM_SECONDS / 2)
        pause.tick(0.001, 100.2 + CALM_SECONDS * 1.4)
        assert state(pid) == "T"  # the calm began again after the last late turn
        pause.tick(0.001, 100.3 + CALM_SECONDS * 2)
        assert wait_for(lambda: state(pid) not in ("T", ""))
        assert pause.stops == 1
    finally:
        pause.stop()
        keeper.stop()


def test_under_a_load_that_never_eases_the_model_still_runs_a_moment_each_stop() -> None:
    keeper = running_keeper()
    pause = ModelPause(keeper)
    pid = keeper.process.pid
    try:
        pause.tick(LATE, 0.0)
        assert wait_for(lambda: state(pid) == "T")
        pause.tick(LATE, LONGEST_STOP_SECONDS - 0.1)
        assert state(pid) == "T"
        pause.tick(LATE, LONGEST_STOP_SECONDS)  # a draft's connection must not give up
        assert wait_for(lambda: state(pid) not in ("T", ""))
        pause.tick(LATE, LONGEST_STOP_SECONDS + SHORTEST_RUN_SECONDS / 2)
        assert state(pid) not in ("T", "")
        pause.tick(LATE, LONGEST_STOP_SECONDS + SHORTEST_RUN_SECONDS)
        assert wait_for(lambda: state(pid) == "T")
        assert pause.stops == 2
    finally:
        pause.stop()
        keeper.stop()


def test_a_restarted_model_is_not_taken_for_the_stopped_one() -> None:
    keeper = Keeper("model stand-in", WORKING, str, first_pause=0.05)
    keeper.start()
    assert wait_for(lambda: keeper.process is not None)
    pause = ModelPause(keeper)
    try:
        first = keeper.process.pid
        pause.tick(LATE, 0.0)
        assert wait_for(lambda: state(first) == "T")
        keeper.process.kill()  # the model crashed while stopped; the keeper starts another
        assert wait_for(lambda: keeper.process.pid != first and state(keeper.process.pid) != "")
        second = keeper.process.pid
        pause.tick(0.001, 1.0)
        assert pause.stopped_pid is None
        pause.tick(LATE, 1.1)  # the new one is stopped in its turn, not left running
        assert wait_for(lambda: state(second) == "T")
    finally:
        pause.stop()
        keeper.stop()


def test_the_watch_in_a_real_event_loop_follows_a_blocked_loop() -> None:
    keeper = running_keeper()
    pid = keeper.process.pid
    pause = ModelPause(keeper, draft_seconds=12).start()  # no stop outlasts 4 s

    def cooperatively(check, seconds: float) -> bool:
        """Whether ``check()`` became true within ``seconds``, letting the watch run."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not check():
            gevent.sleep(0.05)
        return bool(check())

    try:
        gevent.sleep(0.15)  # the watch begins its first turn
        time.sleep(0.3)  # not cooperative here: the whole loop waits, as chats would
        assert cooperatively(lambda: state(pid) == "T", 1.0)
        assert cooperatively(lambda: state(pid) not in ("T", ""), CALM_SECONDS + 4 + 3)
    finally:
        pause.stop()
        keeper.stop()


def test_a_stop_never_takes_more_than_a_third_of_a_short_draft() -> None:
    keeper = running_keeper()
    pause = ModelPause(keeper, draft_seconds=12)
    pid = keeper.process.pid
    try:
        pause.tick(LATE, 0.0)
        assert wait_for(lambda: state(pid) == "T")
        pause.tick(LATE, 3.9)
        assert state(pid) == "T"
        pause.tick(LATE, 4.0)  # a draft allowed 12 s must not spend more than 4 s stopped
        assert wait_for(lambda: state(pid) not in ("T", ""))
    finally:
        pause.stop()
        keeper.stop()


def test_a_stopped_model_ends_at_once_when_serve_stops_it() -> None:
    keeper = running_keeper()
    process = keeper.process
    ModelPause(keeper).tick(LATE, 0.0)
    assert wait_for(lambda: state(process.pid) == "T")
    began = time.monotonic()
    keeper.stop()
    assert process.returncode == -signal.SIGTERM  # ended by its SIGTERM, not the SIGKILL after
    assert time.monotonic() - began < 2
