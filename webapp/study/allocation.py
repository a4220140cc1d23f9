"""Concealed, verifiable allocation: stratified permuted blocks of random sizes.

At ``study start`` every stratum (language and site) gets a list of arms made of
blocks. Each block's size is drawn from the definition's block sizes, and each block
holds the arms in their ratios, in an order shuffled by the operating system's CSPRNG.
Three copies of a list are kept, for three readers:

- the *commitment*, ``SHA-256(salt || canonical list)``, is printed and logged at start
  for the statistician and the trial registry. The salt has a fixed 32 bytes, and the
  canonical list is the compact JSON ``{"blocks": [[arm, ...], ...], "stratum": ...}``
  with sorted keys and ASCII escapes, so anyone can recompute it after the reveal;
- the list and its salt, sealed to the statistician's X25519 key, opened by
  ``study reveal`` after data lock;
- the server's working copy, each entry encrypted on its own (padded to one size, so
  its length tells nothing) under the stratum's own key in the key-slot file, with its
  stratum and position as associated data: allocating opens the next entry and no
  other, and an entry moved elsewhere does not open.

A root operator could still open the working copy early; no page or command does,
every allocation is appended to the study log, and the reveal shows whether each
allocation matches the list committed to at the start.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import nacl.public
import nacl.secret
import nacl.signing
from sqlite_utils import Database

from stillroom.crypto.box import UnsealError, open_sealed, seal
from stillroom.webapp.keyslots import new_slot, slot_key
from stillroom.webapp.store import connect, migrate, transaction
from stillroom.webapp.study import log
from stillroom.webapp.study.log import create_signing_key, read_signing_key

#: Lists are longer than a stratum's maximum by this share, so that late blocks exist.
LIST_MARGIN = 0.1
#: An arm id is padded to this many bytes before it is encrypted (ids have at most 30).
ENTRY_BYTES = 32
#: One encrypted entry: nonce, padded arm id, tag.
RECORD_BYTES = nacl.secret.Aead.NONCE_SIZE + ENTRY_BYTES + nacl.secret.Aead.MACBYTES


class AllocationError(Exception):
    """Allocation cannot go on: see the message for what to do."""


class AlreadyAllocatedError(AllocationError):
    """This pseudonym was allocated before; nobody is allocated twice."""


class ListExhaustedError(AllocationError):
    """A stratum's list has no entry left: the stratum took more than its maximum."""


class StudyStartedError(AllocationError):
    """A study was started in this data directory already."""


class RevealError(Exception):
    """The revealed lists do not match the commitments, or allocations do not match them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class AllocationList:
    """One stratum's list: its blocks of arm ids, in order, and the salt of its commitment."""

    stratum: str
    salt: bytes
    blocks: tuple[tuple[str, ...], ...]

    @property
    def arms(self) -> list[str]:
        """Return the arm of every position, first to last."""
        return [arm for block in self.blocks for arm in block]

    def canonical(self) -> bytes:
        """Return the bytes the commitment covers besides the salt."""
        content = {"blocks": [list(block) for block in self.blocks], "stratum": self.stratum}
        return json.dumps(
            content, sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()

    def commitment(self) -> str:
        """Return ``SHA-256(salt || canonical list)`` as hex."""
        return hashlib.sha256(self.salt + self.canonical()).hexdigest()


def list_length(participants_per_stratum: int) -> int:
    """Return how long each stratum's list is made: the maximum and a margin on top."""
    return participants_per_stratum + math.ceil(participants_per_stratum * LIST_MARGIN)


def draw_blocks(
    arms: list[tuple[str, int]], block_sizes: list[int], length: int, rng: random.Random
) -> tuple[tuple[str, ...], ...]:
    """Return shuffled blocks of random sizes, the arms in their ratios, until ``length``.

    :param arms: ``(arm id, ratio)`` pairs.
    :param rng: the source of randomness: the CSPRNG, except in :func:`simulate`.
    :raises ValueError: when a block size is not a positive multiple of the ratios' sum.
    """
    total = sum(ratio for _, ratio in arms)
    if not block_sizes or any(size <= 0 or size % total for size in block_sizes):
        raise ValueError(f"every block size must be a positive multiple of {total}")
    blocks: list[tuple[str, ...]] = []
    drawn = 0
    while drawn < length:
        size = rng.choice(block_sizes)
        block = [arm for arm, ratio in arms for _ in range(size // total * ratio)]
        rng.shuffle(block)
        blocks.append(tuple(block))
        drawn += size
    return tuple(blocks)


def _associated(stratum: str, position: int) -> bytes:
    return f"{stratum}:{position}".encode()


def _lock_entries(key: bytes, stratum: str, arms: list[str]) -> bytes:
    """Encrypt every entry on its own and join the records (each :data:`RECORD_BYTES`)."""
    box = nacl.secret.Aead(key)
    return b"".join(
        bytes(box.encrypt(arm.encode().ljust(ENTRY_BYTES, b"\0"), _associated(stratum, position)))
        for position, arm in enumerate(arms)
    )


def _open_entry(key: bytes, stratum: str, position: int, entries: bytes) -> str:
    """Decrypt the entry at ``position`` and no other."""
    record = entries[position * RECORD_BYTES : (position + 1) * RECORD_BYTES]
    padded = nacl.secret.Aead(key).decrypt(record, _associated(stratum, position))
    return padded.rstrip(b"\0").decode()


@contextmanager
def _writing(db: Database) -> Iterator[None]:
    """Join the caller's write transaction, or run in one of our own."""
    if db.conn.in_transaction:
        yield
    else:
        with transaction(db):
            yield


def _start(
    db: Database,
    strata: list[str],
    arms: list[tuple[str, int]],
    block_sizes: list[int],
    length_per_stratum: int,
    statistician_public_key: bytes,
    rng: random.Random,
) -> dict[str, str]:
    commitments = {}
    with _writing(db):
        for stratum in strata:
            made = AllocationList(
                stratum,
                secrets.token_bytes(32),
                draw_blocks(arms, block_sizes, length_per_stratum, rng),
            )
            for_statistician = json.dumps(
                {"blocks": made.blocks, "salt": made.salt.hex(), "stratum": stratum}
            ).encode()
            slot = new_slot(db)
            db.execute(
                "INSERT INTO allocation_lists (stratum, length, commitment, sealed, slot, entries)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    stratum,
                    len(made.arms),
                    made.commitment(),
                    seal(for_statistician, statistician_public_key),
                    slot,
                    _lock_entries(slot_key(db, slot), stratum, made.arms),
                ],
            )
            commitments[stratum] = made.commitment()
    return commitments


def start_allocation(
    db: Database,
    strata: list[str],
    arms: list[tuple[str, int]],
    block_sizes: list[int],
    length_per_stratum: int,
    statistician_public_key: bytes,
) -> dict[str, str]:
    """Make every stratum's list with the CSPRNG, store its three copies; return commitments.

    :returns: ``{stratum: commitment hex}``, to publish.
    """
    # Always the operating system's CSPRNG: a seeded generator is reachable from simulate only.
    return _start(
        db,
        strata,
        arms,
        block_sizes,
        length_per_stratum,
        statistician_public_key,
        secrets.SystemRandom(),
    )


def start_study(
    db: Database,
    data_dir: Path,
    study_id: str,
    definition_sha256: str,
    day: date,
    keys: tuple[bytes, bytes],
    strata: list[str],
    arms: list[tuple[str, int]],
    block_sizes: list[int],
    participants_per_stratum: int,
    allocation_fingerprint: str | None = None,
    record: Callable[[Database], None] | None = None,
) -> dict[str, str]:
    """Freeze the study: record it, make the signing key and the lists, log the start.

    :param keys: the study team's and the statistician's X25519 public keys.
    :param allocation_fingerprint: what the lists were made from, logged with the start
        so that no amendment can change it unnoticed.
    :param record: writes what else the start keeps, in the same transaction.
    :returns: ``{stratum: commitment hex}``, to publish.
    :raises StudyStartedError: when this data directory has a study already.
    """
    study_key, statistician_key = keys
    with transaction(db):
        if db.execute("SELECT 1 FROM study").fetchone():
            raise StudyStartedError("a study was started here already")
        # A key left by a start that failed later is reused: nothing was signed with it.
        signing = read_signing_key(data_dir)
        signing_public = (
            create_signing_key(data_dir)
            if signing is None
            else bytes(nacl.signing.SigningKey(signing).verify_key)
        )
        db.table("study").insert(
            {
                "id": study_id,
                "definition_sha256": definition_sha256,
                "started_day": day.isoformat(),
                "study_public_key": study_key,
                "statistician_public_key": statistician_key,
                "signing_public_key": signing_public,
            }
        )
        commitments = start_allocation(
            db,
            strata,
            arms,
            block_sizes,
            list_length(participants_per_stratum),
            statistician_key,
        )
        detail: log.Detail = {"study": study_id, "definition": definition_sha256}
        if allocation_fingerprint:
            detail["allocation"] = allocation_fingerprint
        detail.update({f"commitment.{stratum}": value for stratum, value in commitments.items()})
        log.append(db, "start", day, None, detail)
        if record is not None:
            record(db)
    return commitments


def allocate(db: Database, pseudonym: str, stratum: str, day: date) -> str:
    """Give ``pseudonym`` the next entry of its stratum's list, once; log it; return the arm.

    Runs in the caller's write transaction if there is one, else in its own.

    :raises AlreadyAllocatedError: when the pseudonym has an allocation.
    :raises ListExhaustedError: when the stratum's list is used up.
    :raises AllocationError: for a stratum the study does not have.
    """
    with _writing(db):
        if db.execute("SELECT 1 FROM allocations WHERE pseudonym = ?", [pseudonym]).fetchone():
            raise AlreadyAllocatedError(pseudonym)
        row = db.execute(
            "SELECT length, slot, entries FROM allocation_lists WHERE stratum = ?", [stratum]
        ).fetchone()
        if row is None:
            raise AllocationError(f"the study has no stratum {stratum!r}")
        length, slot, entries = row
        (position,) = db.execute(
            "SELECT coalesce(max(position) + 1, 0) FROM allocations WHERE stratum = ?", [stratum]
        ).fetchone()
        if position >= length:
            raise ListExhaustedError(f"the list of {stratum} has no entry left")
        arm = _open_entry(slot_key(db, slot), stratum, position, entries)
        try:
            db.execute(
                "INSERT INTO allocations (pseudonym, stratum, position, arm, day)"
                " VALUES (?, ?, ?, ?, ?)",
                [pseudonym, stratum, position, arm, day.isoformat()],
            )
        except sqlite3.IntegrityError as error:
            raise AlreadyAllocatedError(pseudonym) from error
        log.append(
            db, "allocation", day, pseudonym, {"stratum": stratum, "position": position, "arm": arm}
        )
    return arm


def sealed_lists(db: Database) -> dict[str, bytes]:
    """Return every stratum's list as sealed to the statistician."""
    return {
        stratum: sealed
        for stratum, sealed in db.execute("SELECT stratum, sealed FROM allocation_lists")
    }


def reveal(sealed: dict[str, bytes], statistician_secret_key: bytes) -> dict[str, AllocationList]:
    """Open the lists sealed at start with the statistician's secret key.

    :raises RevealError: when a list was not sealed to this key, or is not one.
    """
    opened = {}
    for stratum, box in sealed.items():
        try:
            content = json.loads(open_sealed(box, statistician_secret_key))
            opened[stratum] = AllocationList(
                content["stratum"],
                bytes.fromhex(content["salt"]),
                tuple(tuple(block) for block in content["blocks"]),
            )
        except (UnsealError, ValueError, KeyError, TypeError) as error:
            raise RevealError([f"{stratum}: the list does not open with this key"]) from error
    return opened


def verify_reveal(db: Database, revealed: dict[str, AllocationList]) -> int:
    """Check every list against its commitment, and every allocation against its list.

    The commitments are taken both from the table and from the study log's first row,
    whose hash the sites noted down; the study log must verify first.

    :returns: how many allocations were checked.
    :raises RevealError: listing every mismatch.
    """
    log.verify(db)
    problems = []
    started = log.entries(db, "start")
    logged = started[0].detail if started else {}
    for stratum, length, commitment in db.execute(
        "SELECT stratum, length, commitment FROM allocation_lists ORDER BY stratum"
    ):
        made = revealed.get(stratum)
        if made is None:
            problems.append(f"{stratum}: no list was revealed")
        elif made.stratum != stratum or made.commitment() != commitment:
            problems.append(f"{stratum}: the list does not match its commitment")
        elif logged.get(f"commitment.{stratum}") != commitment:
            problems.append(f"{stratum}: the commitment differs from the one logged at start")
        elif len(made.arms) != length:
            problems.append(f"{stratum}: the list has {len(made.arms)} entries, not {length}")
    if problems:
        raise RevealError(problems)
    checked = 0
    following: dict[str, int] = {}
    seen: set[str] = set()
    for entry in log.entries(db, "allocation"):
        stratum, position, arm = (entry.detail.get(key) for key in ("stratum", "position", "arm"))
        where = f"log row {entry.seq}"
        arms = revealed[str(stratum)].arms if stratum in revealed else []
        if entry.pseudonym in seen:
            problems.append(f"{where}: a second allocation of the same participant")
        elif not isinstance(position, int) or position != following.get(str(stratum), 0):
            problems.append(f"{where}: skips or repeats a position of the list of {stratum}")
        elif position >= len(arms) or arms[position] != arm:
            problems.append(f"{where}: the arm is not the list's at position {position}")
        seen.add(str(entry.pseudonym))
        following[str(stratum)] = (position if isinstance(position, int) else 0) + 1
        checked += 1
    for pseudonym, stratum, position, arm in db.execute(
        "SELECT pseudonym, stratum, position, arm FROM allocations"
    ):
        arms = revealed[stratum].arms if stratum in revealed else []
        if position >= len(arms) or arms[position] != arm:
            problems.append(f"the allocation of {pseudonym} is not its list's")
    (stored,) = db.execute("SELECT count(*) FROM allocations").fetchone()
    if stored != checked:
        problems.append(f"{stored} allocations are stored but {checked} are logged")
    if problems:
        raise RevealError(problems)
    return checked


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` found: the arms in order of allocation, per stratum."""

    block_sizes: list[int]
    arms: list[str]
    sequences: dict[str, list[str]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Return ``{stratum: {arm: count}}``."""
        return {
            stratum: {arm: sequence.count(arm) for arm in self.arms}
            for stratum, sequence in self.sequences.items()
        }

    def as_dict(self) -> dict[str, object]:
        """Return ``{"block_sizes": [...], "strata": {stratum: {arm: count}}}``."""
        return {"block_sizes": self.block_sizes, "strata": self.counts()}


def simulate(
    strata: list[str],
    arms: list[tuple[str, int]],
    block_sizes: list[int],
    participants_per_stratum: int,
    participants: int,
    seed: int,
) -> Simulation:
    """Allocate ``participants`` with the real code in a throwaway data directory.

    ``seed`` drives a deterministic generator in place of the CSPRNG, for the block
    sizes, their order and each participant's stratum, so a run can be repeated. The
    directory is removed afterwards.

    :raises ListExhaustedError: when a stratum receives more than its list holds.
    """
    rng = random.Random(seed)  # noqa: S311 - a repeatable simulation, never a real list
    day = date.today()
    with tempfile.TemporaryDirectory(prefix="stillroom-simulate-") as folder:
        path = Path(folder) / "stillroom.db"
        migrate(path)
        db = connect(path)
        try:
            with transaction(db):  # one commit for the run: the disk is not the subject
                _start(
                    db,
                    strata,
                    arms,
                    block_sizes,
                    list_length(participants_per_stratum),
                    nacl.public.PrivateKey.generate().public_key.encode(),
                    rng,
                )
                for number in range(participants):
                    allocate(db, f"simulated-{number}", rng.choice(strata), day)
            sequences = {
                stratum: [
                    arm
                    for (arm,) in db.execute(
                        "SELECT arm FROM allocations WHERE stratum = ? ORDER BY position",
                        [stratum],
                    )
                ]
                for stratum in strata
            }
        finally:
            db.close()
    return Simulation(list(block_sizes), [arm for arm, _ in arms], sequences)
