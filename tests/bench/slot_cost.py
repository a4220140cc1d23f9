"""What the key-slot layer costs: per message sent, per deletion, per login lookup.

Builds a real data directory (in a temporary folder, or under ``--dir`` to measure
another filesystem), with ``--pairs`` participant-therapist pairs booked into open
chats (the test suite's argon2 costs, so that setup is quick). Then it times, with the
real functions the views call:

- a message sent (``send_message``: the conversation key's slot is read and its lock
  opened, the day's key is read, the message key derived, the row written), and the
  slot work alone within it (two slot reads, one SecretBox, one BLAKE2b);
- a conversation deleted (``delete_conversation``), an account deleted
  (``delete_account``), and the slot work alone within them (overwrite and ``fsync``);
- finding an account by its passphrase's tag among ``--slots`` slots: building the
  index of tags (once per process), a lookup through it, and a scan of the whole file.

Prints each median and 99th percentile in milliseconds, and last one line with the
medians. Needs no server.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/slot_cost.py [--pairs 20] [--messages 500]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.py
import pyotp

from stillroom.crypto.box import message_key
from stillroom.crypto.kdf import KeyDeriver
from stillroom.crypto.passphrase import generate_passphrase
from stillroom.crypto.slots import SlotFile, create_slot_file
from stillroom.webapp import accounts, booking, chat, keyslots, therapists
from stillroom.webapp.instance import prepare_instance, subkey
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

from support import FAST_ARGON2


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    """Run ``action`` ``rounds`` times; return each time in milliseconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def report(name: str, times: list[float]) -> float:
    median = statistics.median(times)
    p99 = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"{name:<44} median {median:8.3f} ms   p99 {p99:8.3f} ms   ({len(times)} runs)")
    return median


def book_pairs(settings: Settings, pairs: int) -> list[tuple[chat.ChatAppointment, bytes, bytes]]:
    """Book ``pairs`` open chats; return each with the participant's and therapist's keys."""
    secret = prepare_instance(settings)
    deriver = KeyDeriver(settings.argon2, 1, 5)
    db = connect(settings.database_path)
    now = int(time.time())
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
    booked = []
    try:
        for number in range(pairs):
            enrolment = therapists.add_therapist(db, f"T{number}", ("en",), "UTC", now)
            totp = pyotp.random_base32()
            therapist_id, therapist_key = therapists.enrol(
                db,
                deriver,
                enrolment.token,
                generate_passphrase("en"),
                totp,
                pyotp.TOTP(totp).at(now),
                now,
            )
            start = (now // 60 + 70) * 60
            (slot,) = booking.publish_slots(db, therapist_id, [start], 50, ("en",), ("en",), now)
            account = accounts.create_account(
                db, deriver, subkey(secret, b"lookup-key"), generate_passphrase("en"), today
            )
            appointment_id = booking.book(db, account.participant_id, slot, "en", now, 1, 0)
            appointment = chat.appointment_for(db, "therapist", therapist_id, appointment_id)
            booked.append((appointment, account.secret_key, therapist_key))
    finally:
        db.close()
    return booked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--slots", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to make the data directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        settings = Settings.load(
            {}, data_dir=Path(tmp) / "instance", disk_reserve_mib=0, **FAST_ARGON2
        )
        booked = book_pairs(settings, args.pairs)
        db = connect(settings.database_path)
        now = int(time.time())
        medians = {}
        try:
            sends = iter(range(args.messages))
            pair = booked[0]

            def send() -> None:
                next(sends)
                chat.send_message(db, pair[0], "participant", pair[1], "a line", now, 120, 14)

            medians["send"] = report("send a message (send_message)", timed(send, args.messages))
            conversation_id = chat.conversation_id_of(
                db, pair[0].participant_id, pair[0].therapist_id
            )
            (c_slot, locked), (d_slot,) = (
                db.execute(
                    "SELECT slot, key_for_participant FROM conversations WHERE id = ?",
                    [conversation_id],
                ).fetchone(),
                db.execute("SELECT slot FROM day_keys").fetchone(),
            )

            def slot_work() -> None:
                keyslots.unlock(db, c_slot, locked)
                message_key(bytes(32), keyslots.slot_key(db, d_slot))

            medians["send slots"] = report(
                "  of which the slot work", timed(slot_work, args.messages)
            )
            for appointment, _participant_key, therapist_key in booked[1:]:
                chat.send_message(db, appointment, "therapist", therapist_key, "x", now, 120, 14)
            conversations = [
                chat.conversation_id_of(db, a.participant_id, a.therapist_id)
                for a, _, _ in booked[1:]
            ]
            gone = iter(conversations)
            medians["delete conversation"] = report(
                "delete a conversation (delete_conversation)",
                timed(lambda: chat.delete_conversation(db, str(next(gone))), len(conversations)),
            )
            accounts_left = iter([a.participant_id for a, _, _ in booked])
            medians["delete account"] = report(
                "delete an account (delete_account)",
                timed(lambda: accounts.delete_account(db, next(accounts_left)), len(booked)),
            )
        finally:
            db.close()
        spare_dir = Path(tmp) / "spare"
        spare_dir.mkdir()
        spare = spare_dir / keyslots.SLOT_FILE
        create_slot_file(spare)
        slots = SlotFile(spare)
        lookups = connect(spare_dir / "stillroom.db")  # only to name the slot file's folder
        try:
            made = iter([slots.create() for _ in range(200)])
            medians["destroy"] = report(
                "  of which the slot work (overwrite, fsync)",
                timed(lambda: slots.destroy([next(made)]), 200),
            )
            tags = [os.urandom(32) for _ in range(args.slots)]
            with spare.open("r+b") as raw:  # a big slot file, written at once
                raw.write(b"".join(tag + os.urandom(32) for tag in tags))
            medians["index"] = report(
                f"first lookup: index the tags of {args.slots:,} slots",
                timed(lambda: keyslots.find_slots(lookups, tags[0]), 1),
            )
            wanted = iter(tags[-200:])
            medians["find"] = report(
                "a login's lookup through the index (an account)",
                timed(lambda: keyslots.find_slots(lookups, next(wanted)), 200),
            )
            medians["miss"] = report(
                "a login's lookup through the index (no account)",
                timed(lambda: keyslots.find_slots(lookups, os.urandom(32)), 200),
            )
            medians["scan"] = report(
                "the same without an index (a scan of the file)",
                timed(lambda: slots.find(os.urandom(32)), 50),
            )
        finally:
            lookups.close()
            slots.close()
    print(" ".join(f"{name.replace(' ', '_')}_ms={value:.3f}" for name, value in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
