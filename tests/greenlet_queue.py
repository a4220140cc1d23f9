"""Run under gevent, as ``stillroom serve`` runs: do the notice board and the database
pool ever make a greenlet wait while nobody holds what it asks for?

Prints ``switches_in_version=N switches_in_acquire=N published=N``: how often a greenlet
asking the board for a counter, or the pool for one of its free connections, was put
aside for another. Both should be 0. Run by ``tests/test_greenlets.py``.
"""

from gevent import monkey

monkey.patch_all()

import time  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

from stillroom.webapp.db import MAX_CONNECTIONS, lender  # noqa: E402
from stillroom.webapp.hub import Hub  # noqa: E402

PAIRS = 500
SECONDS = 2.0

hub = Hub()
lent = lender()
asking: dict[greenlet.greenlet, str] = {}
switches = {"version": 0, "acquire": 0}
published = 0


def watch(event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
    """Count each switch away from a greenlet in the middle of a question."""
    if event in ("switch", "throw") and args[0] in asking:
        switches[asking[args[0]]] += 1


def ask(what: str, question):  # type: ignore[no-untyped-def]
    asking[greenlet.getcurrent()] = what
    try:
        return question()
    finally:
        del asking[greenlet.getcurrent()]


def feed(pair: int, until: float) -> None:
    """A held feed: borrow a connection, ask the board, give it back, wait for news."""
    key = f"p{pair}"
    while time.monotonic() < until:
        ask("acquire", lambda: lent.acquire(timeout=5))
        seen = ask("version", lambda: hub.version(key))
        lent.release()
        hub.wait(key, seen, 0.5)


def writer(until: float) -> None:
    """Messages to random pairs, a few hundred a second."""
    global published
    pair = 0
    while time.monotonic() < until:
        pair = (pair * 7 + 3) % PAIRS
        hub.publish(f"p{pair}")
        published += 1
        gevent.sleep(0.002)


greenlet.settrace(watch)
until = time.monotonic() + SECONDS
jobs = [gevent.spawn(feed, pair, until) for pair in range(PAIRS) for _ in range(2)]
jobs += [gevent.spawn(writer, until) for _ in range(4)]
gevent.joinall(jobs, timeout=SECONDS + 30)
greenlet.settrace(None)
assert MAX_CONNECTIONS < 2 * PAIRS  # the pool is smaller than the crowd, as under load
print(
    f"switches_in_version={switches['version']} switches_in_acquire={switches['acquire']}"
    f" published={published}"
)
