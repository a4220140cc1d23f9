"""Crash safety: SIGKILL ``stillroom serve`` 200 times under chat and booking load.

The rounds are those of ``tests/crashloop.py``: after every kill the files pass
``PRAGMA integrity_check``, no slot is booked twice, every acknowledged booking is
there, every acknowledged message reads back through the app, and an expired message
that the purge deleted never comes back. One round in ten is killed while it starts.

Prints the figures and, last,
``kills=N acknowledged_messages=N acknowledged_bookings=N failures=N restart_p50_s=X``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/crash_loop.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers
import crashloop
from loadclients import percentile

from support import free_port, stillroom_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=200, help="kills under load")
    parser.add_argument("--pairs", type=int, default=8, help="chats writing both ways")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "instance"
        env = stillroom_env(
            data_dir,
            free_port(),
            {
                "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
                "STILLROOM_CHAT_RATE_MESSAGES": "1000",
                "STILLROOM_CHAT_RATE_SECONDS": "1",
            },
        )
        setup = crashloop.prepare(data_dir, env, args.pairs, args.rounds)
        ledger = crashloop.Ledger()
        asyncio.run(crashloop.run(setup, ledger, args.rounds, Path(tmp) / "server.log"))
        size = (data_dir / "stillroom.db").stat().st_size
    for problem in ledger.problems[:20]:
        print(f"problem: {problem}")
    print(
        f"{ledger.kills} kills under load ({ledger.early_kills} more while starting) in"
        f" {time.monotonic() - began:.0f} s; database {size / 1e6:.1f} MB at the end"
    )
    print(
        f"acknowledged: {ledger.acknowledged_messages} messages, {len(ledger.bookings)} bookings;"
        f" lost messages {ledger.lost_messages}, lost bookings {ledger.lost_bookings},"
        f" integrity failures {ledger.integrity_failures}, double bookings"
        f" {ledger.double_bookings + ledger.double_acknowledged},"
        f" expired rows back {ledger.resurrected}"
    )
    print(
        f"restart until both apps answer: p50 {percentile(ledger.starts, 0.5):.2f} s,"
        f" p99 {percentile(ledger.starts, 0.99):.2f} s, max {max(ledger.starts):.2f} s"
    )
    print(
        f"kills={ledger.kills} acknowledged_messages={ledger.acknowledged_messages}"
        f" acknowledged_bookings={len(ledger.bookings)} failures={ledger.failures}"
        f" restart_p50_s={percentile(ledger.starts, 0.5):.2f}"
    )
    return 1 if ledger.failures else 0


if __name__ == "__main__":
    sys.exit(main())
