"""The study log: an append-only hash chain of what happened in the trial.

Each row holds a day, an event, a pseudonym (or none) and details made of coded
values, never free text. Its hash is ``SHA-256(prev_hash || canonical row)``, where
``prev_hash`` is the hash of the row before (32 zero bytes for the first) and the
canonical row is the compact JSON array ``[seq, day, event, pseudonym, detail]`` with
sorted keys and ASCII escapes. JSON's grammar makes that encoding unambiguous, and
anyone can recompute it from an export with a few lines of any language.

Changing, deleting or reordering a row breaks the chain at that row, which
:func:`verify` names. Rewriting the whole chain after a change, or cutting rows off
its end, keeps it consistent: that is what the head, printed by ``stillroom study
verify`` and noted down by the sites, is for. A later head must extend every head
noted before (:func:`verify` with ``known``). The server also signs the head with the
study signing key, so that a head a site noted down is provably the server's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import nacl.exceptions
import nacl.signing
from sqlite_utils import Database

#: What the log records (TRIAL.md); ``start`` is the study's first row.
EVENTS = (
    "start",
    "consent",
    "consent-version",
    "eligibility",
    "allocation",
    "crossover",
    "session-attended",
    "session-missed",
    "assessment-completed",
    "assessment-missed",
    "safety-rule",
    "withdrawal",
    "amendment",
    "handover",
    "unblinding",
)

#: The hash before the first row.
GENESIS = bytes(32)
#: A coded value: ids, versions, hex digests. No spaces, so no sentence fits in it.
CODE = re.compile(r"[A-Za-z0-9._:-]{0,80}")
#: Detail keys and pseudonyms.
NAME = re.compile(r"[a-z0-9._-]{1,64}")
PSEUDONYM = re.compile(r"[A-Za-z0-9_-]{1,64}")

Detail = dict[str, str | int | bool | None]

#: The study signing key (Ed25519) in the data directory, made by ``study start``.
SIGNING_KEY_FILE = "study-signing.key"


class StudyLogError(Exception):
    """The study log's chain is broken at a row, or a noted head is not part of it."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        super().__init__(f"study log row {seq}: {reason}")


@dataclass(frozen=True)
class Head:
    """The last row of the chain: its number and hash (``seq`` 0 for an empty log)."""

    seq: int
    hash_hex: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash_hex}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """Read a head written as ``SEQ:HASH``.

        :raises ValueError: when it is not one.
        """
        seq, _, hash_hex = text.strip().partition(":")
        if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", hash_hex):
            raise ValueError(f"{text!r} is not a head written as SEQ:HASH")
        return cls(int(seq), hash_hex)


def canonical_row(seq: int, day: str, event: str, pseudonym: str | None, detail: Detail) -> bytes:
    """Return the bytes a row's hash covers (see the module's docstring)."""
    return json.dumps(
        [seq, day, event, pseudonym, detail],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def row_hash(prev_hash: bytes, row: bytes) -> bytes:
    """Return ``SHA-256(prev_hash || row)``; ``prev_hash`` has a fixed 32 bytes."""
    return hashlib.sha256(prev_hash + row).digest()


def _check_detail(detail: Detail) -> None:
    for key, value in detail.items():
        if not NAME.fullmatch(key):
            raise ValueError(f"detail key {key!r} is not a coded name")
        if isinstance(value, str) and not CODE.fullmatch(value):
            raise ValueError(f"detail {key!r} is not a coded value")
        if value is not None and not isinstance(value, str | int | bool):
            raise ValueError(f"detail {key!r} is not a string, number, truth value or none")


def append(db: Database, event: str, day: date, pseudonym: str | None, detail: Detail) -> int:
    """Inside the caller's write transaction: add a row to the chain; return its ``seq``.

    Taking the row before under the same write lock keeps the chain a single line
    whatever the number of processes.

    :raises ValueError: for an unknown event, or a detail that is not a coded value.
    :raises RuntimeError: outside a write transaction.
    """
    if not db.conn.in_transaction:
        raise RuntimeError("the study log is appended to inside a write transaction")
    if event not in EVENTS:
        raise ValueError(f"unknown study event {event!r}")
    if pseudonym is not None and not PSEUDONYM.fullmatch(pseudonym):
        raise ValueError("a pseudonym is letters, digits, '-' and '_'")
    _check_detail(detail)
    last = db.execute("SELECT seq, hash FROM study_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (1, GENESIS) if last is None else (last[0] + 1, last[1])
    row = canonical_row(seq, day.isoformat(), event, pseudonym, detail)
    db.execute(
        "INSERT INTO study_log (seq, day, event, pseudonym, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            seq,
            day.isoformat(),
            event,
            pseudonym,
            json.dumps(detail, sort_keys=True),
            prev_hash,
            row_hash(prev_hash, row),
        ],
    )
    return seq


@dataclass(frozen=True)
class Entry:
    """One row of the log as :func:`entries` reads it."""

    seq: int
    day: str
    event: str
    pseudonym: str | None
    detail: Detail


def entries(db: Database, event: str | None = None) -> list[Entry]:
    """Return the log's rows in order, or only those of one ``event``."""
    where, parameters = ("WHERE event = ?", [event]) if event else ("", [])
    return [
        Entry(seq, day, name, pseudonym, json.loads(detail))
        for seq, day, name, pseudonym, detail in db.execute(
            f"SELECT seq, day, event, pseudonym, detail FROM study_log {where} ORDER BY seq",  # noqa: S608
            parameters,
        )
    ]


def verify(db: Database, known: Head | None = None) -> Head:
    """Recompute the whole chain and return its head.

    :param known: a head noted down earlier; the chain must still pass through it.
    :raises StudyLogError: naming the first row that was changed, removed or moved,
        or the noted head the chain no longer holds.
    """
    expected_seq, prev_hash = 1, GENESIS
    hashes: dict[int, bytes] = {}
    for seq, day, event, pseudonym, detail, stored_prev, stored in db.execute(
        "SELECT seq, day, event, pseudonym, detail, prev_hash, hash FROM study_log ORDER BY seq"
    ):
        if seq != expected_seq:
            raise StudyLogError(expected_seq, "missing (a row was deleted or moved)")
        if stored_prev != prev_hash:
            raise StudyLogError(seq, "does not follow the row before (deleted, moved or changed)")
        try:
            row = canonical_row(seq, day, event, pseudonym, json.loads(detail))
        except (TypeError, ValueError) as error:
            raise StudyLogError(seq, "its details are not readable") from error
        if row_hash(prev_hash, row) != stored:
            raise StudyLogError(seq, "its contents were changed")
        hashes[seq] = prev_hash = stored
        expected_seq += 1
    head = Head(expected_seq - 1, prev_hash.hex())
    if known is not None and known.seq > 0 and hashes.get(known.seq, b"").hex() != known.hash_hex:
        raise StudyLogError(known.seq, f"differs from the head noted down ({known})")
    return head


def head_message(study_id: str, head: Head) -> bytes:
    """Return the bytes the signing key signs for a head: the study's name and the head."""
    return f"stillroom-study-log-head:{study_id}:{head}".encode()


def sign_head(study_id: str, head: Head, signing_key: bytes) -> bytes:
    """Return the Ed25519 signature of ``head`` (64 bytes), by the study signing key."""
    message = head_message(study_id, head)
    return bytes(nacl.signing.SigningKey(signing_key).sign(message).signature)


def check_head_signature(study_id: str, head: Head, signature: bytes, public_key: bytes) -> bool:
    """Return whether ``signature`` is the study signing key's for ``head``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(head_message(study_id, head), signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def create_signing_key(data_dir: Path) -> bytes:
    """Make the study signing key in the data directory (0600); return its public key.

    :raises FileExistsError: when there is one (a study is signed by one key throughout).
    """
    key = nacl.signing.SigningKey.generate()
    fd = os.open(data_dir / SIGNING_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(bytes(key))
        handle.flush()
        os.fsync(handle.fileno())
    return bytes(key.verify_key)


def read_signing_key(data_dir: Path) -> bytes | None:
    """Return the study signing key's secret seed, or ``None`` when there is none."""
    path = data_dir / SIGNING_KEY_FILE
    return path.read_bytes() if path.exists() else None
