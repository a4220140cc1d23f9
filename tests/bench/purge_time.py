"""How long the purge takes to delete 100,000 expired messages, and the audit on that database.

Builds a real data directory: ``--pairs`` participant-therapist pairs (made through the
domain functions, with the test suite's argon2 costs so that setup is quick), each with a
conversation whose key is sealed to both sides, and ``--messages`` real envelopes in all
(padded, encrypted), already past their expiry day. Then it times, on that database:
the audit (which reports the expired rows as a breach), the purge, the audit again, and a
second purge (which finds nothing).

Prints the figures and, last,
``messages=N purge_seconds=X audit_before_seconds=X audit_after_seconds=X``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/purge_time.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chat_load.py, beside this script

from chat_load import create_chats  # it puts tests/ on the path, for support.py

from stillroom.crypto.box import seal_message
from stillroom.crypto.kdf import FAST_FOR_TESTS
from stillroom.webapp.audit import run_audit
from stillroom.webapp.chat import start_conversation
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction

from support import argon2_env

TEXT = "A message of ordinary length, the kind that is written many times in a chat hour."


def fill(settings: Settings, pairs: int, messages: int) -> None:
    """Give each pair a conversation and spread ``messages`` expired envelopes over them."""
    chats = create_chats(pairs, settings)
    db = connect(settings.database_path)
    now = int(time.time())
    try:
        conversations = []
        for chat in chats:
            participant_id, therapist_id = db.execute(
                "SELECT participant_id, therapist_id FROM appointments WHERE id = ?",
                [chat.appointment],
            ).fetchone()
            conversations.append(start_conversation(db, participant_id, therapist_id))
        # Real envelopes (padded, encrypted, the right sizes) under a random key per
        # conversation: neither the purge nor the audit ever opens a message.
        keys = {conversation_id: os.urandom(32) for conversation_id in conversations}
        per_conversation = messages // len(conversations)
        with transaction(db):
            for conversation_id in conversations:
                key = keys[conversation_id]
                db.conn.executemany(
                    "INSERT INTO messages (conversation_id, seq, envelope, expires_day)"
                    " VALUES (?, ?, ?, '2000-01-01')",
                    [
                        (
                            conversation_id,
                            seq,
                            seal_message(key, conversation_id, seq, "participant", now // 60, TEXT),
                        )
                        for seq in range(1, per_conversation + 1)
                    ],
                )
    finally:
        db.close()


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(argon2_env(FAST_FOR_TESTS))
        os.environ["STILLROOM_DATA_DIR"] = str(Path(tmp) / "instance")
        settings = Settings.load()
        seconds, _ = timed(lambda: fill(settings, args.pairs, args.messages))
        size = settings.database_path.stat().st_size
        print(
            f"built {args.messages} expired messages in {args.pairs} conversations:"
            f" {seconds:.1f} s, database {size / 2**20:.1f} MiB",
            flush=True,
        )
        now = int(time.time())
        audit_before, checks = timed(lambda: run_audit(settings, now))
        failing = [check.name for check in checks if not check.ok]  # type: ignore[attr-defined]
        print(f"audit before the purge: {audit_before:.2f} s, breaches: {failing}")
        db = connect(settings.database_path)
        try:
            purge_seconds, removed = timed(lambda: purge(db, now, settings))
            again, removed_again = timed(lambda: purge(db, now, settings))
        finally:
            db.close()
        print(
            f"purge: {purge_seconds:.2f} s, {removed} rows; again: {again:.3f} s, {removed_again}"
        )
        audit_after, checks = timed(lambda: run_audit(settings, now))
        failing = [check.name for check in checks if not check.ok]  # type: ignore[attr-defined]
        wal = settings.database_path.with_name("stillroom.db-wal")
        print(
            f"audit after: {audit_after:.2f} s, breaches: {failing};"
            f" -wal after the purge: {wal.stat().st_size if wal.exists() else 0} bytes"
        )
    print(
        f"messages={args.messages} purge_seconds={purge_seconds:.2f}"
        f" audit_before_seconds={audit_before:.2f} audit_after_seconds={audit_after:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
