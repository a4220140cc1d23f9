"""The in-process notice board of the live chat: who waits for news of which pair.

Kept in memory only and never written anywhere: a key is a participant-therapist
pair, a value is a counter that moves on whenever something in their chat changes.
A WebSocket waits here and tells its browser to reload the feed; a held feed reload
(without JavaScript) waits here and answers as soon as there is news.

Each key has its own condition (all share one lock), so news for one pair wakes only
the sockets of that pair: with one condition for all, every message woke every open
socket (``tests/bench/chat_load.py`` spent a fifth of the server's time there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def _never() -> bool:
    return False


class Hub:
    """Counters per key, with waiting for the next change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._waiting: dict[str, tuple[threading.Condition, int]] = {}
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
            if key in self._waiting:
                self._waiting[key][0].notify_all()

    def publish_participant(self, participant_id: str) -> None:
        """Move on every pair of one participant (their chats changed in a way that no
        message announces: a deletion or a cancellation)."""
        prefix = f"{participant_id}:"
        with self._lock:
            for key in [k for k in {*self._versions, *self._waiting} if k.startswith(prefix)]:
                self._versions[key] = self._versions.get(key, 0) + 1
                if key in self._waiting:
                    self._waiting[key][0].notify_all()

    def wake(self, key: str) -> None:
        """Wake everyone waiting for ``key`` to look again at what they wait for."""
        with self._lock:
            if key in self._waiting:
                self._waiting[key][0].notify_all()

    def close(self) -> None:
        """Say the server is stopping, and wake every waiter so that held feeds answer."""
        with self._lock:
            self._closing = True
            for condition, _waiters in self._waiting.values():
                condition.notify_all()

    def wait(self, key: str, seen: int, timeout: float, stop: Callable[[], bool] = _never) -> int:
        """Wait until ``key`` moves past ``seen``, ``stop()`` is true or ``timeout``
        passes; return its counter.

        :param stop: asked each time the waiter is woken (see :meth:`wake`, :meth:`close`).
        """
        with self._lock:
            condition, waiters = self._waiting.get(key, (None, 0))
            if condition is None:
                condition = threading.Condition(self._lock)
            self._waiting[key] = (condition, waiters + 1)
            try:
                condition.wait_for(lambda: self._versions.get(key, 0) != seen or stop(), timeout)
                return self._versions.get(key, 0)
            finally:
                condition, waiters = self._waiting[key]
                if waiters == 1:
                    del self._waiting[key]
                else:
                    self._waiting[key] = (condition, waiters - 1)


#: One board per process: both apps of ``stillroom serve`` share it.
HUB = Hub()
