"""The in-process notice board of the live chat: who waits for news of which pair.

Kept in memory only and never written anywhere: a key is a participant-therapist
pair, a value is a counter that moves on whenever something in their chat changes.
A WebSocket waits here and tells its browser to reload the feed; a held feed reload
(without JavaScript) waits here and answers as soon as there is news.

News for one pair wakes only the waiters of that pair: with one condition for all,
every message woke every open socket (``tests/bench/chat_load.py`` spent a fifth of the
server's time there). Each waiter sleeps on an event of its own, and the board's lock
only guards its dictionaries, never a wait: with a condition per key sharing the lock,
every waiter woken had to take the lock again, and under gevent the greenlets queued
for it, each a turn of the event loop; a feed reload, which asks the board twice while
it holds a database connection, then waited seconds for a lock nobody was using, and
the chats waited for its connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def _never() -> bool:
    return False


class Hub:
    """Counters per key, with waiting for the next change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._waiting: dict[str, set[threading.Event]] = {}
        self._closing = False

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down (held feeds then answer at once)."""
        return self._closing

    def version(self, key: str) -> int:
        """Return the current counter of ``key`` (from now on known, so that
        :meth:`publish_participant` moves it on too)."""
        with self._lock:
            return self._versions.setdefault(key, 0)

    def publish(self, key: str) -> None:
        """Move ``key`` on and wake everyone waiting for it."""
        with self._lock:
            self._versions[key] = self._versions.get(key, 0) + 1
            waiting = list(self._waiting.get(key, ()))
        self._set(waiting)

    def publish_participant(self, participant_id: str) -> None:
        """Move on every pair of one participant (their chats changed in a way that no
        message announces: a deletion or a cancellation)."""
        prefix = f"{participant_id}:"
        with self._lock:
            waiting: list[threading.Event] = []
            for key in [k for k in {*self._versions, *self._waiting} if k.startswith(prefix)]:
                self._versions[key] = self._versions.get(key, 0) + 1
                waiting += self._waiting.get(key, ())
        self._set(waiting)

    def wake(self, key: str) -> None:
        """Wake everyone waiting for ``key`` to look again at what they wait for."""
        with self._lock:
            waiting = list(self._waiting.get(key, ()))
        self._set(waiting)

    def close(self) -> None:
        """Say the server is stopping, and wake every waiter so that held feeds answer."""
        with self._lock:
            self._closing = True
            waiting = [event for events in self._waiting.values() for event in events]
        self._set(waiting)

    @staticmethod
    def _set(waiting: list[threading.Event]) -> None:
        """Wake these waiters, outside the board's lock (an event takes a lock of its own)."""
        for event in waiting:
            event.set()

    def wait(self, key: str, seen: int, timeout: float, stop: Callable[[], bool] = _never) -> int:
        """Wait until ``key`` moves past ``seen``, ``stop()`` is true or ``timeout``
        passes; return its counter.

        :param stop: asked each time the waiter is woken (see :meth:`wake`, :meth:`close`).
        """
        event = threading.Event()
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting.setdefault(key, set()).add(event)
        try:
            while True:
                with self._lock:
                    version = self._versions.get(key, 0)
                left = deadline - time.monotonic()
                if version != seen or stop() or left <= 0:
                    return version
                event.wait(left)
                event.clear()  # news after this is seen by the next look at the counter
        finally:
            with self._lock:
                waiting = self._waiting[key]
                waiting.discard(event)
                if not waiting:
                    del self._waiting[key]


#: One board per process: both apps of ``stillroom serve`` share it.
HUB = Hub()
