"""The server's shared objects under gevent, as ``stillroom serve`` runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "greenlet_queue.py"


def test_no_feed_queues_for_the_notice_board_or_a_free_connection():
    """Under load, asking the notice board for news, or the pool for a free connection,
    never puts a greenlet aside: with the standard library's condition and semaphore,
    1,000 chats' requests queued for a lock nobody was using, seconds each, while
    holding the connections the other chats waited for."""
    run = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        check=True,
    )
    figures = dict(pair.split("=") for pair in run.stdout.split())
    assert int(figures["published"]) > 100  # the board was busy
    assert figures["switches_in_version"] == "0"
    assert figures["switches_in_acquire"] == "0"
