"""Kill ``stillroom serve`` with SIGKILL under load, again and again, and check what survives.

Each round:

1. with the server down, check the files: ``PRAGMA integrity_check`` is ok, no slot
   is held by two appointments, every acknowledged booking is there, and the expired
   message put back before the last start is gone (the purge deleted it, and the
   crash did not bring it back); then put back another expired message;
2. start the server and time it until both apps answer;
3. read every conversation back through the app, decrypted, and check that every
   message the server acknowledged (``200`` to the send) is there;
4. load it: both sides of every pair send messages as fast as they are answered,
   and fresh participants log in and race each other for the same free times;
5. SIGKILL the server at a random moment, now and then even while it starts.

Shared by ``test_crash.py`` (a few rounds) and ``bench/crash_loop.py`` (200).
"""

from __future__ import annotations

import asyncio
import datetime
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadclients import Chat, Connection, create_chats, form_token, log_in_all, session_cookie

from stillroom.crypto.passphrase import generate_passphrase
from stillroom.webapp import accounts, booking
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

#: Every round puts back a copy of a message with this expiry day; the purge must delete it.
EXPIRED_DAY = "2000-01-01"
#: Fresh participants per round, racing for :data:`SLOTS_PER_ROUND` free times.
BOOKERS_PER_ROUND = 4
SLOTS_PER_ROUND = 2
#: How long one start may take before the run fails.
START_TIMEOUT = 30
#: One round in this many is killed while the server starts, before it answers.
EARLY_KILL_EVERY = 10


@dataclass
class Booker:
    """A participant with no appointment yet, who will try to book this round's times."""

    passphrase: str
    participant_id: str


@dataclass
class Ledger:
    """What the server acknowledged, and what the checks found."""

    messages: dict[str, list[str]] = field(default_factory=dict)  # appointment -> texts
    bookings: dict[str, str] = field(default_factory=dict)  # slot -> participant
    double_acknowledged: int = 0
    lost_messages: int = 0
    lost_bookings: int = 0
    integrity_failures: int = 0
    double_bookings: int = 0
    resurrected: int = 0
    starts: list[float] = field(default_factory=list)
    kills: int = 0
    early_kills: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def acknowledged_messages(self) -> int:
        """Messages the server answered ``200`` to, over all rounds."""
        return sum(len(texts) for texts in self.messages.values())

    @property
    def failures(self) -> int:
        """Everything that must be zero."""
        return (
            self.lost_messages
            + self.lost_bookings
            + self.integrity_failures
            + self.double_bookings
            + self.double_acknowledged
            + self.resurrected
        )


@dataclass
class Setup:
    """The data directory, the server's environment and who acts in it."""

    data_dir: Path
    env: dict[str, str]
    ports: tuple[int, int]
    chats: list[Chat]
    bookers: list[Booker]
    slots: list[str]


def prepare(data_dir: Path, env: dict[str, str], pairs: int, rounds: int) -> Setup:
    """Make the pairs that chat, and the participants and free times for every round.

    ``env`` is the server's environment (``STILLROOM_DATA_DIR``, ports, argon2 costs),
    so that the accounts made here open there.
    """
    settings = Settings.load(env)
    chats = create_chats(pairs, settings)
    app = create_participant_app(settings)
    deriver, lookup_key = app.config["KEY_DERIVER"], app.config["LOOKUP_KEY"]
    db = connect(settings.database_path)
    now = int(time.time())
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
    therapist_ids = [row[0] for row in db.execute("SELECT id FROM therapists ORDER BY rowid")]
    first = (now // 3600 + 48) * 3600  # beyond every booking cutoff
    starts = [first + 3600 * number for number in range(rounds * SLOTS_PER_ROUND)]
    slots: list[str] = []
    for number, start in enumerate(starts):
        therapist = therapist_ids[number % len(therapist_ids)]
        slots += booking.publish_slots(db, therapist, [start], 50, ("en",), ("en",), now)
    bookers = []
    for _ in range(rounds * BOOKERS_PER_ROUND):
        passphrase = generate_passphrase("en")
        account = accounts.create_account(db, deriver, lookup_key, passphrase, today)
        bookers.append(Booker(passphrase, account.participant_id))
    db.close()
    ports = (int(env["STILLROOM_PARTICIPANT_PORT"]), int(env["STILLROOM_PORTAL_PORT"]))
    return Setup(data_dir, env, ports, chats, bookers, slots)


def check_files(setup: Setup, ledger: Ledger, purged: bool) -> None:
    """Check the database as the crash left it; put back an expired message for the next start.

    :param purged: whether the last start got as far as answering, so its purge ran.
    """
    conn = sqlite3.connect(setup.data_dir / "stillroom.db", isolation_level=None)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            ledger.integrity_failures += 1
            ledger.problems.append(f"integrity_check: {result[:3]}")
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT slot_id FROM appointments WHERE slot_id IS NOT NULL"
            " GROUP BY slot_id HAVING count(*) > 1)"
        ).fetchone()[0]
        ledger.double_bookings += doubled
        held = dict(conn.execute("SELECT slot_id, participant_id FROM appointments"))
        for slot, participant in ledger.bookings.items():
            if held.get(slot) != participant:
                ledger.lost_bookings += 1
                ledger.problems.append(f"acknowledged booking of {slot} is gone")
        expired = conn.execute(
            "SELECT count(*) FROM messages WHERE expires_day = ?", [EXPIRED_DAY]
        ).fetchone()[0]
        if purged and expired:
            ledger.resurrected += expired
            ledger.problems.append(f"{expired} expired messages are back after the crash")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO messages (conversation_id, seq, envelope, expires_day)"
            " SELECT conversation_id, -1 - ?, envelope, ? FROM messages"
            " WHERE expires_day != ? LIMIT 1",
            [expired, EXPIRED_DAY, EXPIRED_DAY],  # below every sequence the app gives
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def start(setup: Setup, log: Path) -> subprocess.Popen[bytes]:
    """Start ``stillroom serve --no-tor`` on the setup's fixed ports."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("stillroom")), "serve", "--no-tor"],
            env=setup.env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def wait_until_answering(setup: Setup, process: subprocess.Popen[bytes]) -> None:
    """Return once both apps answer a page; fail if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    for port in setup.ports:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode} while starting")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer within {START_TIMEOUT} s")
            probe = Connection(port)
            try:
                status, _, _ = await probe.request("GET", "/en/login")
            except OSError:
                status = 0
            probe.close()
            if status == 200:
                break
            await asyncio.sleep(0.02)


async def check_messages(setup: Setup, ledger: Ledger) -> None:
    """Read each conversation's history through the app and find every acknowledged text."""
    connection = Connection(setup.ports[0])
    try:
        await read_back(connection, setup, ledger)
    finally:
        connection.close()


async def read_back(connection: Connection, setup: Setup, ledger: Ledger) -> None:
    """Compare each history page with the ledger."""
    for chat in setup.chats:
        wanted = ledger.messages.get(chat.appointment, [])
        status, _, page = await connection.request(
            "GET", f"/en/chat/{chat.appointment}/history", chat.participant_cookie
        )
        text = page.decode()
        missing = [message for message in wanted if f">{message}<" not in text]
        if status != 200 or missing:
            ledger.lost_messages += len(missing) if status == 200 else len(wanted)
            ledger.problems.append(f"history {status}, {len(missing)} acknowledged texts missing")


async def keep_talking(setup: Setup, ledger: Ledger, chat: Chat, side: str, round_: int) -> None:
    """Send one message after another from one side of ``chat``; keep what was answered 200."""
    port, cookie, token = (
        (setup.ports[0], chat.participant_cookie, chat.participant_token)
        if side == "p"
        else (setup.ports[1], chat.therapist_cookie, chat.therapist_token)
    )
    connection = Connection(port)
    texts = ledger.messages.setdefault(chat.appointment, [])
    number = 0
    while True:
        number += 1
        text = f"round {round_} {side} {number} {chat.appointment[:8]}"
        status, _, _ = await connection.request(
            "POST",
            f"/en/chat/{chat.appointment}/compose",
            cookie,
            {"form_token": token, "text": text},
        )
        if status == 200:
            texts.append(text)


async def race_for_times(setup: Setup, ledger: Ledger, booker: Booker, slots: list[str]) -> None:
    """Log a fresh participant in and try this round's free times in a random order."""
    connection = Connection(setup.ports[0])
    try:
        _, _, page = await connection.request("GET", "/en/login")
        form = {"form_token": form_token(page), "passphrase": booker.passphrase}
        status, headers, _ = await connection.request("POST", "/en/login", form=form)
        if status != 302:
            return
        cookie = session_cookie(headers)
        _, _, page = await connection.request("GET", "/en/book", cookie)
        token = form_token(page)
        for slot in random.sample(slots, len(slots)):
            status, headers, _ = await connection.request(
                "POST", "/en/book", cookie, {"form_token": token, "slot": slot}
            )
            if status == 302 and "done=booked" in headers.get("location", ""):
                if slot in ledger.bookings:
                    ledger.double_acknowledged += 1
                    ledger.problems.append(f"{slot} was acknowledged to two participants")
                ledger.bookings[slot] = booker.participant_id
                return
    finally:
        connection.close()


async def load_then_kill(
    setup: Setup, ledger: Ledger, process: subprocess.Popen[bytes], round_: int
) -> None:
    """Run the load and SIGKILL the server at a random moment while it runs."""
    bookers = setup.bookers[round_ * BOOKERS_PER_ROUND : (round_ + 1) * BOOKERS_PER_ROUND]
    slots = setup.slots[round_ * SLOTS_PER_ROUND : (round_ + 1) * SLOTS_PER_ROUND]
    tasks = [
        asyncio.ensure_future(keep_talking(setup, ledger, chat, side, round_))
        for chat in setup.chats
        for side in ("p", "t")
    ]
    tasks += [asyncio.ensure_future(race_for_times(setup, ledger, b, slots)) for b in bookers]
    await asyncio.sleep(random.uniform(0.05, 1.0))
    process.send_signal(signal.SIGKILL)
    ledger.kills += 1
    await asyncio.gather(*tasks, return_exceptions=True)  # each ends on the dead connection
    process.wait(timeout=30)


async def run(setup: Setup, ledger: Ledger, rounds: int, log: Path) -> None:
    """Run ``rounds`` rounds, each ended by a SIGKILL; then check once more."""
    servers: list[subprocess.Popen[bytes]] = []
    try:
        await run_rounds(setup, ledger, rounds, log, servers)
    finally:
        for server in servers:  # a failed check must not leave a server on the ports
            if server.poll() is None:
                server.kill()
                server.wait()


async def run_rounds(
    setup: Setup, ledger: Ledger, rounds: int, log: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    """The rounds of :func:`run`; every server started is added to ``servers``."""

    def started() -> subprocess.Popen[bytes]:
        servers.append(start(setup, log))
        return servers[-1]

    purged = False
    for round_ in range(rounds):
        check_files(setup, ledger, purged)
        began = time.monotonic()
        process = started()
        if round_ % EARLY_KILL_EVERY == EARLY_KILL_EVERY - 1:
            await asyncio.sleep(random.uniform(0.0, 0.8))  # importing, migrating, purging
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                ledger.early_kills += 1
            process.wait(timeout=30)
            check_files(setup, ledger, purged=False)
            process = started()
            began = time.monotonic()
        await wait_until_answering(setup, process)
        ledger.starts.append(time.monotonic() - began)
        purged = True
        if round_ == 0:
            await log_in_all(setup.chats, *setup.ports)
        await check_messages(setup, ledger)
        await load_then_kill(setup, ledger, process, round_)
    check_files(setup, ledger, purged)
    process = started()
    await wait_until_answering(setup, process)
    await check_messages(setup, ledger)
    process.terminate()
    process.wait(timeout=30)
