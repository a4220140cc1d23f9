"""A server killed with SIGKILL under load loses nothing it acknowledged and corrupts nothing."""

from __future__ import annotations

import asyncio

import crashloop

from support import free_port, stillroom_env

ROUNDS = 10  # one of them (crashloop.EARLY_KILL_EVERY) killed while starting


def test_sigkill_under_load_keeps_every_acknowledged_write(tmp_path):
    """What the server answered survives; no double booking; nothing expired comes back."""
    data_dir = tmp_path / "data"
    env = stillroom_env(data_dir, free_port(), crash_env())
    setup = crashloop.prepare(data_dir, env, pairs=3, rounds=ROUNDS)
    ledger = crashloop.Ledger()
    asyncio.run(crashloop.run(setup, ledger, ROUNDS, tmp_path / "server.log"))
    assert ledger.kills == ROUNDS and ledger.early_kills == 1
    assert ledger.acknowledged_messages >= 3 * ROUNDS, "the load really wrote"
    assert len(ledger.bookings) >= ROUNDS // 2, "the races really booked"
    assert ledger.failures == 0, ledger.problems


def crash_env() -> dict[str, str]:
    """Chats open now, and no rate limit in the way of the load (argon2 is fast already)."""
    return {
        "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
        "STILLROOM_CHAT_RATE_MESSAGES": "1000",
        "STILLROOM_CHAT_RATE_SECONDS": "1",
    }
