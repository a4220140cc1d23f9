"""What a copy of the server's disk gives an attacker: the ways it is tried, as the attacker works.

- A raw ext4 image that held a live data directory, scanned byte by byte after deletions
  (``shared/recipes/forensic-disk.md``): CI runs as root and loop-mounts it; without
  loop devices the test fails with the reason, it never skips.
- A copied data directory attacked offline with the most common passwords and the
  therapist's name: nothing opens, since no secret that guards a key was chosen by a person.
- The portal's login, timed: a login name that exists and one that does not cost the same.
"""

from __future__ import annotations

import datetime
import http.cookiejar
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pyotp
import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from stillroom.crypto import kdf, keys, passphrase
from stillroom.crypto.box import UnsealError, open_sealed
from stillroom.crypto.slots import SLOT_BYTES
from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.instance import subkey
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import LANGUAGES, Settings
from stillroom.webapp.store import connect

from support import (
    FORM_TOKEN,
    PENDING,
    SLOT,
    TOTP_SECRET,
    AuthActions,
    LoopbackClient,
    TherapistActions,
    add_therapist_by_cli,
    rows,
    shown_passphrase,
    start_server,
    stop_server,
)

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
#: Bytes of a locked blob that identify its stale copies (random ciphertext: never by chance).
PREFIX = 48
DAY = 24 * 3600


# --- A browser without a browser: the real forms, over HTTP ---------------------------


@dataclass
class Visitor:
    """One person's browser: a cookie jar and the pages' own forms, over real HTTP."""

    base: str
    opener: urllib.request.OpenerDirector = field(init=False)

    def __post_init__(self) -> None:
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def get(self, path: str) -> str:
        with self.opener.open(f"{self.base}{path}", timeout=30) as response:
            return str(response.read().decode())

    def post(
        self,
        path: str,
        fields: dict[str, str | list[str]],
        page: str | None = None,
        html: str | None = None,
    ) -> str:
        """Send the form of ``page`` (by default ``path``; or of ``html``, already fetched),
        with its token; return where the answer led, or its error status."""
        html = html if html is not None else self.get(page or path)
        token = FORM_TOKEN.search(html)
        assert token is not None, html[:300]
        form: dict[str, str | list[str]] = {"form_token": token.group(1)}
        pending = PENDING.search(html)
        if pending:
            form["pending"] = pending.group(1)
        body = urllib.parse.urlencode({**form, **fields}, doseq=True).encode()
        try:
            with self.opener.open(f"{self.base}{path}", body, timeout=30) as response:
                return str(response.geturl())
        except urllib.error.HTTPError as refused:
            refused.close()
            return f"status {refused.code}"


def enrol(portal: Visitor, data_dir: Path) -> tuple[str, str, pyotp.TOTP]:
    """Add a therapist with the CLI and enrol at the portal as a person would.

    :returns: the login name, the passphrase the page gave, and the authenticator.
    """
    login_name, token = add_therapist_by_cli(data_dir, "Anna", "en")
    page = portal.get(f"/en/enrol/{token}")
    words = shown_passphrase(page)
    totp = pyotp.TOTP(TOTP_SECRET.search(page).group(1).replace(" ", ""))  # type: ignore[union-attr]
    enrolled = portal.post(f"/en/enrol/{token}", {"confirm": words, "code": totp.now()}, html=page)
    assert "done=enrolled" in enrolled, enrolled
    return login_name, words, totp


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=check)


# --- The raw disk image ----------------------------------------------------------------


@pytest.fixture
def loop_mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 filesystem in a 64 MiB image file, loop-mounted; yields (image, mount point).

    It is always unmounted (and the image removed) afterwards, also when the test fails.
    """
    if os.geteuid() != 0:
        pytest.fail("the disk image test loop-mounts ext4: run it as root (CI does)")
    image, mount_point = tmp_path / "disk.img", tmp_path / "mnt"
    mount_point.mkdir()
    with image.open("wb") as sparse:
        sparse.truncate(64 * 1024 * 1024)
    made = run("mkfs.ext4", "-q", "-F", str(image), check=False)
    assert made.returncode == 0, f"mkfs.ext4 failed: {made.stderr}"
    mounted = run("mount", "-o", "loop", str(image), str(mount_point), check=False)
    if mounted.returncode != 0:
        pytest.fail(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        yield image, mount_point
    finally:
        run("sync", check=False)
        if run("umount", str(mount_point), check=False).returncode != 0:
            run("umount", "-l", str(mount_point), check=False)
        image.unlink(missing_ok=True)


def unmount(mount_point: Path) -> None:
    run("sync")
    run("umount", str(mount_point))


@dataclass
class Pair:
    """A participant and the therapist, their booked chat, and what it left in the database."""

    visitor: Visitor
    passphrase: str
    appointment: str = ""
    canaries: tuple[str, ...] = ()


@dataclass
class Needles:
    """Bytes to look for in the image, taken while the objects existed, by kind."""

    must_be_gone: dict[str, list[bytes]] = field(default_factory=dict)
    locked_copies: dict[str, list[bytes]] = field(default_factory=dict)
    metadata: dict[str, list[bytes]] = field(default_factory=dict)

    def add(self, group: dict[str, list[bytes]], kind: str, *values: bytes) -> None:
        group.setdefault(kind, []).extend(value for value in values if value)


def publish_three_times(therapist: Visitor) -> None:
    """Offer three 15-minute times an hour from now (their chats open two hours early)."""
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime.datetime.now(berlin) + datetime.timedelta(minutes=62)
    for number in range(3):
        start = first + datetime.timedelta(minutes=17 * number)
        landed = therapist.post(
            "/en/availability",
            {
                "date": start.date().isoformat(),
                "time": start.strftime("%H:%M"),
                "duration": "15",
                "weeks": "1",
                "languages": ["en"],
            },
        )
        assert "done=published" in landed, landed


def slot_contents(data_dir: Path) -> bytes:
    return (data_dir / "keys.slots").read_bytes()


def slot_key_of(data_dir: Path, slot: int) -> bytes:
    content = slot_contents(data_dir)
    return content[slot * SLOT_BYTES + 32 : (slot + 1) * SLOT_BYTES]


def test_deleted_keys_and_messages_leave_nothing_that_opens_on_the_raw_disk(
    loop_mounted: tuple[Path, Path], tmp_path: Path
):
    image, mount_point = loop_mounted
    data_dir = mount_point / "data"
    server = start_server(data_dir, {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120"})
    needles = Needles()
    try:
        # A therapist enrols through the portal and offers three times.
        therapist = Visitor(server.portal_url)
        _login_name, therapist_passphrase, _totp = enrol(therapist, data_dir)
        publish_three_times(therapist)

        # Three participants book one each; every pair chats with canary text.
        pairs = []
        for number, fate in enumerate(("conversation-deleted", "account-deleted", "expired")):
            visitor = Visitor(server.url)
            page = visitor.get("/en/create")
            words = shown_passphrase(page)
            assert "/en/account" in visitor.post("/en/create", {"confirm": words}, html=page)
            [slot_id, *_] = SLOT.findall(visitor.get("/en/book"))
            assert "/en/account" in visitor.post("/en/book", {"slot": slot_id}, page="/en/book")
            pair = Pair(visitor, words)
            pair.canaries = (
                f"canary-{fate}-{number}-participant-7d2e",
                f"canary-{fate}-therapist-1b9f",
            )
            pairs.append(pair)
        appointments = rows(
            Settings.load({}, data_dir=data_dir),
            "SELECT appointments.id FROM appointments JOIN participants"
            " ON participants.id = participant_id ORDER BY starts_at",
        )
        for pair, (appointment,) in zip(pairs, appointments, strict=True):
            pair.appointment = appointment
        for pair in pairs:  # booked in order, so the earliest time is the first pair's
            compose = f"/en/chat/{pair.appointment}/compose"
            pair.visitor.post(compose, {"text": pair.canaries[0]})
            therapist.post(compose, {"text": pair.canaries[1]})

        # What each object is made of, read while it exists.
        db = sqlite3.connect(f"file:{data_dir / 'stillroom.db'}?mode=ro", uri=True)
        try:
            conversations = db.execute(
                "SELECT c.id, c.slot, c.key_for_participant, c.key_for_therapist, p.slot,"
                " p.wrapped_secret_key, p.id, pairs.pseudonym FROM conversations c"
                " JOIN participants p ON p.id = c.participant_id"
                " JOIN pairs ON pairs.participant_id = p.id ORDER BY"
                " (SELECT starts_at FROM appointments a WHERE a.participant_id = p.id)"
            ).fetchall()
            envelopes = db.execute("SELECT conversation_id, envelope FROM messages").fetchall()
            day_slots = [row[0] for row in db.execute("SELECT slot FROM day_keys")]
        finally:
            db.close()
        assert len(conversations) == 3 and len(envelopes) == 6 and day_slots
        slots_before = slot_contents(data_dir)
        for pair, row in zip(pairs, conversations, strict=True):
            cid, c_slot, for_p, for_t, p_slot, p_wrapped, p_id, pseudonym = row
            needles.add(needles.must_be_gone, "canary text", *(t.encode() for t in pair.canaries))
            needles.add(
                needles.must_be_gone,
                "canary text (UTF-16)",
                *(t.encode("utf-16-le") for t in pair.canaries),
            )
            needles.add(
                needles.must_be_gone, "conversation slot keys", slot_key_of(data_dir, c_slot)
            )
            needles.add(needles.locked_copies, "sealed conversation keys", for_p, for_t)
            for conversation, envelope in envelopes:
                if conversation == cid:
                    needles.add(needles.locked_copies, "message envelopes", envelope[1:])
                    needles.add(needles.locked_copies, "message nonces", envelope[1:25])
            needles.add(needles.metadata, "participant ids", p_id.encode())
            needles.add(needles.metadata, "pseudonyms", pseudonym.encode())
            if pair is pairs[1]:  # the account that is deleted
                needles.add(
                    needles.must_be_gone, "account slot keys", slot_key_of(data_dir, p_slot)
                )
                needles.add(
                    needles.must_be_gone,
                    "account lookup tags",
                    slots_before[p_slot * SLOT_BYTES : p_slot * SLOT_BYTES + 32],
                )
                needles.add(needles.locked_copies, "wrapped account keys", p_wrapped)
        needles.add(
            needles.must_be_gone, "message day keys", *(slot_key_of(data_dir, s) for s in day_slots)
        )

        # The therapist keeps notes on the participant whose account goes, changed once:
        # both versions' keys must go (the first with the change, the second with the pair).
        note_canary = "canary-note-account-deleted-4c8e"
        notes_page = f"/en/notes/{conversations[1][7]}"
        note_versions = []
        for text in (f"{note_canary} first", f"{note_canary} second"):
            assert "done=notes-saved" in therapist.post(notes_page, {"text": text})
            [note] = rows(Settings.load({}, data_dir=data_dir), "SELECT slot, body FROM notes")
            note_versions.append(note)
            needles.add(needles.must_be_gone, "note slot keys", slot_key_of(data_dir, note[0]))
            needles.add(needles.locked_copies, "sealed notes", note[1])
        needles.add(needles.must_be_gone, "note text", note_canary.encode())

        # A backup, written to the same disk before anything is deleted: it holds every
        # key above, and must leave no plaintext copy of them behind.
        secret_file = tmp_path / "backup.secret"
        made = run(STILLROOM, "backup-key", str(secret_file))
        public = made.stdout.split("STILLROOM_BACKUP_PUBLIC_KEY=", 1)[1].strip()
        backed_up = subprocess.run(
            [STILLROOM, "backup", str(mount_point / "before-deletion.sealed")],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "PYTHONSAFEPATH": "1",
                "STILLROOM_DATA_DIR": str(data_dir),
                "STILLROOM_BACKUP_PUBLIC_KEY": public,
            },
        )
        assert backed_up.returncode == 0, backed_up.stderr

        # One participant deletes the conversation, another the whole account.
        first, second, _expires = pairs
        chat = f"/en/chat/{first.appointment}"
        assert "done=" in first.visitor.post(f"{chat}/delete", {}, page=f"{chat}/delete")
        assert "done=deleted" in second.visitor.post(
            "/en/account/delete", {}, page="/en/account/delete"
        )
    finally:
        stop_server(server)

    # The third conversation passes its retention: the purge of a later day.
    settings = Settings.load({}, data_dir=data_dir, disk_reserve_mib=1)
    db = connect(settings.database_path)
    try:
        assert purge(db, int(time.time()) + 15 * DAY, settings) > 0
        assert db.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
    finally:
        db.close()
    final_slots = slot_contents(data_dir)
    server_key = (data_dir / "server.key").read_bytes()
    [(t_slot, t_locked)] = rows(settings, "SELECT slot, wrapped_secret_key FROM therapists")
    unmount(mount_point)

    raw = image.read_bytes()
    counts = {
        kind: sum(raw.count(value) for value in values)
        for kind, values in needles.must_be_gone.items()
    }
    # A blob longer than a database page is split across overflow pages, so a whole-blob
    # search would miss its stale copies: count them by their first bytes instead.
    copies = {
        kind: sum(raw.count(value[:PREFIX]) for value in values)
        for kind, values in needles.locked_copies.items()
    }
    metadata = {
        kind: sum(raw.count(value) for value in values) for kind, values in needles.metadata.items()
    }
    print("\nraw image, after deleting a conversation and an account, a purge and a backup:")
    for kind, count in {**counts, **copies, **metadata}.items():
        print(f"  {kind}: {count} hits")
    assert all(count == 0 for count in counts.values()), counts
    assert all(
        final_slots[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES] == bytes(SLOT_BYTES)
        for slot, _body in note_versions
    ), "the notes' slots are overwritten"
    assert sum(copies.values()) > 0, "the scan finds stale ciphertext, as an examiner would"

    # Every stale copy still in the image is locked under a slot key that occurs nowhere
    # in it (above); and nothing left on the disk, the therapist's passphrase included,
    # opens any of them.
    therapist_key = therapist_secret_key(t_slot, t_locked, final_slots, therapist_passphrase)
    candidates = [
        final_slots[number * SLOT_BYTES + 32 : (number + 1) * SLOT_BYTES]
        for number in range(len(final_slots) // SLOT_BYTES)
    ]
    candidates += [server_key] + [
        subkey(server_key, purpose) for purpose in (b"lookup-key", b"totp-key", b"form-key")
    ]
    found = [value for value in needles.locked_copies["sealed conversation keys"] if value in raw]
    found += [
        value
        for kind in ("wrapped account keys", "sealed notes")
        for value in needles.locked_copies.get(kind, [])
        if value in raw
    ]
    for locked in found:
        for candidate in candidates:
            with pytest.raises(keys.UnwrapError):
                keys.unwrap_key(locked, candidate)
        with pytest.raises(UnsealError):  # nor is it a sealed box the therapist's key opens
            open_sealed(locked, therapist_key)
    print(f"  stale locked keys found whole and tried: {len(found)}, opened: 0")


def therapist_secret_key(slot: int, locked: bytes, slot_file: bytes, secret: str) -> bytes:
    """What the attacker gets with the therapist's passphrase: their key, from the live slot."""
    slot_key = slot_file[slot * SLOT_BYTES + 32 : (slot + 1) * SLOT_BYTES]
    deriver = kdf.KeyDeriver(kdf.FAST_FOR_TESTS, 1, 5)
    opened = kdf.unwrap_with_passphrase(deriver, keys.unwrap_key(locked, slot_key), secret)
    return opened.payload[: keys.KEY_BYTES]


# --- Offline guessing against a copied data directory ----------------------------------

#: Cheap argon2 for this test only: the cheaper a guess, the stronger what it shows.
CHEAP = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}


def name_variants(name: str) -> list[str]:
    """The guesses a person who knows the therapist would try first."""
    years = [str(year) for year in range(2015, 2028)]
    stems = [name, name.lower(), name.upper(), f"Praxis-{name}", f"praxis{name.lower()}"]
    return [
        f"{stem}{joint}{suffix}"
        for stem in stems
        for joint in ("", "-", "_", ".")
        for suffix in ("", "!", "1", "123", "1234567!", *years, *(f"{y}!" for y in years))
    ] + ["Passwort1234567!", "Summer2024Summer", "Praxis-Anna-2024"]


def test_the_most_common_passwords_and_the_therapists_name_open_nothing(tmp_path, clock):
    settings = Settings.load({}, data_dir=tmp_path / "instance", disk_reserve_mib=1, **CHEAP)
    participant = AuthActions(create_participant_app(settings, clock=clock).test_client())
    therapist = TherapistActions(
        create_portal_app(settings, clock=clock).test_client(), clock, settings.database_path
    )
    for client in (participant.client, therapist.client):
        client.__class__ = LoopbackClient
    participant.create()
    therapist.create("Anna")
    copy = tmp_path / "seized"
    shutil.copytree(settings.data_dir, copy)

    guesses = list(dict.fromkeys(FREQUENCY_LISTS["passwords"][:10_000] + name_variants("Anna")))
    assert len(guesses) >= 10_000
    deriver = kdf.KeyDeriver(kdf.Argon2Params(1, 8, 1), 1, 5)
    slot_file = (copy / "keys.slots").read_bytes()
    db = connect(copy / "stillroom.db")
    try:
        wrapped = db.execute(
            "SELECT slot, wrapped_secret_key FROM participants UNION ALL"
            " SELECT slot, wrapped_secret_key FROM therapists"
        ).fetchall()
    finally:
        db.close()
    assert len(wrapped) == 2
    opened = 0
    started = time.perf_counter()
    for slot, locked in wrapped:
        # The attacker has the slot file too: the slot's lock comes off for free.
        inner = keys.unwrap_key(locked, slot_file[slot * SLOT_BYTES + 32 : (slot + 1) * SLOT_BYTES])
        for guess in guesses:
            try:
                kdf.unwrap_with_passphrase(deriver, inner, guess)
            except keys.UnwrapError:
                continue
            opened += 1
    took = time.perf_counter() - started
    tried = f"{len(guesses)} guesses against {len(wrapped)} wrapped keys in {took:.1f} s"
    print(f"\n{tried}: {opened} opened")
    assert opened == 0
    for language in LANGUAGES:  # what enrolment can produce, whatever the language
        assert passphrase.entropy_bits(language) >= 90, language


# --- The portal's login, timed ---------------------------------------------------------


def test_an_unknown_login_name_costs_what_a_known_one_does(settings, therapist, portal_app):
    """A known name with a wrong passphrase, and a name nobody has: medians within 20 %.

    Each try is a first wrong try (the count is reset), so the pause never shortens one.
    Production argon2 costs, as an attacker would meet them.
    """
    portal_app.config["KEY_DERIVER"] = kdf.KeyDeriver(kdf.PRODUCTION, 1, 30)
    therapist.create()  # wrapped with production costs
    therapist.logout()

    def timed(name: str) -> float:
        started = time.perf_counter()
        status = therapist.login(
            name=name, passphrase="wrong words entirely here", code="123456"
        ).status_code
        took = time.perf_counter() - started
        assert status == 401
        return took

    known, unknown = [], []
    for number in range(20):
        db = connect(settings.database_path)
        try:
            db.execute("UPDATE therapists SET failed_logins = 0, locked_until = 0")
        finally:
            db.close()
        known.append(timed("Anna"))
        unknown.append(timed(f"zz{number:02d}-nobody"))
    ratio = statistics.median(unknown) / statistics.median(known)
    print(
        f"\nmedian login: known name {statistics.median(known) * 1000:.0f} ms,"
        f" unknown name {statistics.median(unknown) * 1000:.0f} ms, ratio {ratio:.2f}"
    )
    assert 0.8 <= ratio <= 1.25, (known, unknown)


# --- The server's own output -----------------------------------------------------------

#: What must never appear in the output: a timestamp, a traceback, or what someone sent.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d|\b\d\d:\d\d:\d\d\b")


def test_failed_logins_and_malformed_requests_leave_no_trace_in_the_output(tmp_path):
    server = start_server(tmp_path / "instance")
    try:
        portal = Visitor(server.portal_url)
        login_name, words, totp = enrol(portal, server.data_dir)
        portal.post("/en/logout", {}, page="/en/")
        for name, secret, code in (
            (login_name, "wrong canary-secret words", totp.now()),  # a wrong passphrase
            (login_name, words, "000000"),  # a wrong code
            ("canary-nobody-name", "canary-secret words", "123456"),  # a name nobody has
            (login_name, "x" * 5000, "1"),  # too long
        ):
            portal.post("/en/login", {"name": name, "passphrase": secret, "code": code})
        participant_port = int(server.url.rsplit(":", 1)[1])
        malformed = [
            b"GARBAGE\x00\xff\r\n\r\n",
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-Canary-%d: v\r\n" % n for n in range(150))
            + b"\r\n",
            b"GET / HTTP/1.1\r\nX-Canary: " + b"a" * 70_000 + b"\r\n\r\n",
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: canary-host\r\n\r\n",
            b"POST /en/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
            b"POST /en/login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n",
            b"GET /en/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Canary-UA/1.0\r\n"
            b"Bad Header\r\n\r\n",
        ]
        for port in (participant_port, int(server.portal_url.rsplit(":", 1)[1])):
            for raw in malformed:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(raw)
                    sock.settimeout(10)
                    try:
                        while sock.recv(65536):
                            pass
                    except OSError:
                        pass
    finally:
        stop_server(server)
    output = server.output()
    startup = ("Therapist portal:", "Participant app", "WARNING stillroom.webapp.app: argon2id")
    lines = [line for line in output.splitlines() if line and not line.startswith(startup)]
    print("\nserver output beyond start-up:", lines)
    assert "Traceback" not in output and "Error" not in output, output
    assert not TIMESTAMP.search(output), output
    for identifier in (login_name, "canary", "Canary", words, "127.0.0.1"):
        assert identifier not in "\n".join(lines), identifier
