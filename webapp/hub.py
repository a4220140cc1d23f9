"""The in-process notice board of the live chat: who waits for news of which pair.

Kept in memory only and never written anywhere: a key is a participant-therapist
pair, a value is a counter that moves on whenever something in their chat changes.
A WebSocket waits here and tells its browser to reload the feed.
"""

from __future__ import annotations

import threading


class Hub:
    """Counters per key, with waiting for the next change."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._versions: dict[str, int] = {}

    def version(self, key: str) -> int:
        """Return the current counter of ``key``."""
        with self._changed:
            return self._versions.get(key, 0)

    def publish(self, key: str) -> None:
        """Move ``key`` on and wake everyone waiting for it."""
        with self._changed:
            self._versions[key] = self._versions.get(key, 0) + 1
            self._changed.notify_all()

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Wait until ``key`` moves past ``seen`` or ``timeout`` passes; return its counter."""
        with self._changed:
            self._changed.wait_for(lambda: self._versions.get(key, 0) != seen, timeout)
            return self._versions.get(key, 0)


#: One board per process: both apps of ``stillroom serve`` share it.
HUB = Hub()
