"""Concealed, verifiable allocation and the tamper-evident study log."""

from __future__ import annotations

import base64
import itertools
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from stillroom.crypto.box import seal
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import allocation
from stillroom.webapp.study import log as study_log

from support import stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
DAY = date(2027, 3, 1)
STRATA = ["en-berlin", "de-berlin", "cs-prague", "pt-madrid", "es-madrid"]
ARMS = [("chat", 1), ("waitlist", 1)]
BLOCK_SIZES = [2, 4, 6]
SEEDS = range(200)

#: The shipped example study: two arms 1:1, blocks of 2, 4 and 6, five strata.
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"


@pytest.fixture
def db(settings):
    prepare_instance(settings)
    database = connect(settings.database_path)
    yield database
    database.close()


@pytest.fixture
def statistician() -> tuple[bytes, bytes]:
    return new_recipient_keypair()


@pytest.fixture
def started(db, settings, statistician):
    """A study started with small lists, and five participants allocated in cs-prague."""
    allocation.start_study(
        db,
        settings.data_dir,
        "example-waitlist",
        "ab" * 32,
        DAY,
        (new_recipient_keypair()[0], statistician[0]),
        STRATA,
        ARMS,
        BLOCK_SIZES,
        40,
    )
    for number in range(5):
        allocation.allocate(db, f"P{number}", "cs-prague", DAY)
    return db


def run(data_dir: Path, *args: str, study: Path | None = None):
    extra = {"STILLROOM_STUDY": str(study)} if study else {}
    return subprocess.run(
        [STILLROOM, "study", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=stillroom_env(data_dir, 0, extra),
        check=False,
    )


def key_file(path: Path, key: bytes) -> Path:
    path.write_text(base64.b64encode(key).decode() + "\n")
    return path


def imbalance(counts: dict[str, int]) -> int:
    return max(counts.values()) - min(counts.values())


# --- The lists ------------------------------------------------------------------------


def test_every_block_holds_the_arms_in_their_ratios(db, statistician):
    arms = [("chat", 2), ("waitlist", 1)]
    sizes = [3, 6, 9]
    with transaction(db):
        commitments = allocation.start_allocation(db, STRATA, arms, sizes, 300, statistician[0])
    lists = allocation.reveal(allocation.sealed_lists(db), statistician[1])
    assert set(lists) == set(commitments) == set(STRATA)
    for stratum, made in lists.items():
        assert made.commitment() == commitments[stratum]
        assert len(made.arms) >= 300
        for block in made.blocks:
            assert len(block) in sizes
            assert block.count("chat") == 2 * block.count("waitlist"), (stratum, block)
        # Sizes are drawn, not fixed: in 300 entries every size turns up.
        assert {len(block) for block in made.blocks} == set(sizes)
    assert len({tuple(made.arms) for made in lists.values()}) == len(STRATA)


@pytest.fixture(scope="module")
def simulations() -> list[allocation.Simulation]:
    """630 participants over the five strata, once per seed, through the real code."""
    return [allocation.simulate(STRATA, ARMS, BLOCK_SIZES, 400, 630, seed) for seed in SEEDS]


def test_each_stratum_stays_within_half_the_largest_block(simulations):
    worst = 0
    for simulation in simulations:
        for counts in simulation.counts().values():
            worst = max(worst, imbalance(counts))
        assert sum(sum(counts.values()) for counts in simulation.counts().values()) == 630
    print(f"largest imbalance over {len(simulations)} seeds: {worst}")
    assert worst <= max(BLOCK_SIZES) // 2


def test_simulate_prints_counts_per_stratum_and_repeats_with_its_seed(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "study")
    data_dir = tmp_path / "instance"
    args = ("simulate", "--participants", "630", "--seed", "7", "--json")
    first = run(data_dir, *args, study=tmp_path / "study")
    assert first.returncode == 0, first.stderr
    found = json.loads(first.stdout)
    assert found["block_sizes"] == BLOCK_SIZES
    assert set(found["strata"]) == set(STRATA)
    assert sum(sum(counts.values()) for counts in found["strata"].values()) == 630
    for counts in found["strata"].values():
        assert set(counts) == {"chat", "waitlist"}
        assert imbalance(counts) <= max(BLOCK_SIZES) // 2
    assert run(data_dir, *args, study=tmp_path / "study").stdout == first.stdout
    assert not data_dir.exists()  # a throwaway directory, not this one


# --- Guessing the next allocation -----------------------------------------------------


def arrangements(counts) -> int:
    """How many distinct orders a block with these counts per arm has."""
    counts = list(counts)
    if min(counts) < 0:
        return 0
    return math.factorial(sum(counts)) // math.prod(math.factorial(count) for count in counts)


def bayes_guesses(sequence: list[str], arms, sizes) -> int:
    """Guess each allocation from those before it with the best rule there is: the most
    probable next arm given the history, knowing the arms' ratios, the block sizes and that
    each size is drawn uniformly and each block uniformly shuffled. Returns the hits.

    ``cover[j]`` is (up to a common factor) the probability that whole blocks end exactly
    after the first ``j`` allocations; the next arm's weight sums over where the current
    block began and how long it is.
    """
    names = [arm for arm, _ in arms]
    total = sum(ratio for _, ratio in arms)
    quota = {size: [size // total * ratio for _, ratio in arms] for size in sizes}
    orders = {size: arrangements(quota[size]) for size in sizes}
    longest = max(sizes)
    chance = 1 / len(sizes)

    def completes(history: list[str]) -> float:
        """Weight of whole blocks ending exactly after ``history``, given the cover so far."""
        end = len(history)
        weight = 0.0
        for size in sizes:
            if end - size >= 0 and cover[end - size]:
                counts = [history[end - size : end].count(name) for name in names]
                if counts == quota[size]:
                    weight += chance * cover[end - size] / orders[size]
        return weight

    def prefix(history: list[str], last_cover: float) -> float:
        end = len(history)
        weight = last_cover  # whole blocks end here; the next block is still to come
        for start in range(max(0, end - longest + 1), end):
            if not cover[start]:
                continue
            counts = [history[start:end].count(name) for name in names]
            for size in sizes:
                if size > end - start:
                    remaining = [q - c for q, c in zip(quota[size], counts, strict=True)]
                    weight += cover[start] * chance * arrangements(remaining) / orders[size]
        return weight

    cover = [1.0]
    history: list[str] = []
    hits = 0
    for actual in sequence:
        scores = []
        for name in names:
            candidate = [*history, name]
            scores.append(prefix(candidate, completes(candidate)))
        hits += names[scores.index(max(scores))] == actual
        history.append(actual)
        cover.append(completes(history))
        scale = max(cover[-longest - 1 :]) or 1.0  # keep the window's numbers in range
        for index in range(max(0, len(cover) - longest - 1), len(cover)):
            cover[index] /= scale
    return hits


def fewer_so_far_guesses(sequence: list[str], arms) -> int:
    """The classic rule: guess the arm furthest below its share so far."""
    names = [arm for arm, _ in arms]
    ratios = [ratio for _, ratio in arms]
    hits = 0
    for index, actual in enumerate(sequence):
        before = sequence[:index]
        deficits = [before.count(n) / r for n, r in zip(names, ratios, strict=True)]
        hits += names[deficits.index(min(deficits))] == actual
    return hits


def oracle_rate(arms, sizes) -> float:
    """The long-run hit rate of a guesser who also knows where each block starts and how
    long it is: then the next arm is uniform over what the block has left, and guessing the
    arm with most left is best. Knowing more cannot guess worse, so no rule that sees only
    the history can beat this on average; it is what the block structure allows.
    """
    total = sum(ratio for _, ratio in arms)
    expected_hits = 0.0
    for size in sizes:
        block = [arm for arm, ratio in arms for _ in range(size // total * ratio)]
        orders = set(itertools.permutations(block))
        hits = 0.0
        for order in orders:
            for index in range(size):
                left = order[index:]
                hits += max(left.count(arm) for arm, _ in arms) / len(left)
        expected_hits += hits / len(orders) / len(sizes)
    return expected_hits / (sum(sizes) / len(sizes))  # hits per block over entries per block


def test_guessing_the_next_arm_does_no_better_than_the_blocks_allow(simulations):
    guesses = bayes = fewer = 0
    for simulation in simulations:
        for sequence in simulation.sequences.values():
            guesses += len(sequence)
            bayes += bayes_guesses(sequence, ARMS, BLOCK_SIZES)
            fewer += fewer_so_far_guesses(sequence, ARMS)
    bound = oracle_rate(ARMS, BLOCK_SIZES)  # 0.703 for 1:1 and blocks of 2, 4, 6
    print(
        f"{guesses} guesses over {len(simulations)} seeds: best rule {bayes / guesses:.4f},"
        f" fewer-so-far {fewer / guesses:.4f}; known blocks would allow {bound:.4f}"
    )
    # About 126,000 guesses: one standard error of a rate near 0.7 is 0.0013, so a rate
    # above the bound by 0.01 is no chance; with every block of 2 it would be 0.75.
    assert bayes / guesses <= bound + 0.01
    assert fewer / guesses <= bayes / guesses + 0.01  # the best rule is the best we know


# --- Allocation happens once ----------------------------------------------------------


def test_a_participant_is_allocated_once(started):
    with pytest.raises(allocation.AlreadyAllocatedError):
        allocation.allocate(started, "P0", "cs-prague", DAY)
    with pytest.raises(allocation.AlreadyAllocatedError):
        allocation.allocate(started, "P0", "en-berlin", DAY)  # not in another stratum either
    with pytest.raises(sqlite3.IntegrityError):  # a second row for the same pseudonym
        started.execute(
            "INSERT INTO allocations VALUES ('P0', 'en-berlin', 0, 'chat', '2027-03-01')"
        )
    with pytest.raises(sqlite3.IntegrityError):  # another pseudonym at a taken position
        started.execute(
            "INSERT INTO allocations VALUES ('P9', 'cs-prague', 0, 'chat', '2027-03-01')"
        )
    with pytest.raises(sqlite3.IntegrityError):  # and no re-draw by changing the arm
        started.execute("UPDATE allocations SET arm = 'chat' WHERE pseudonym = 'P0'")
    logged = [entry.pseudonym for entry in study_log.entries(started, "allocation")]
    assert logged == ["P0", "P1", "P2", "P3", "P4"]
    positions = started.execute(
        "SELECT position FROM allocations WHERE stratum = 'cs-prague' ORDER BY position"
    ).fetchall()
    assert [row[0] for row in positions] == [0, 1, 2, 3, 4]


def test_no_command_or_column_shows_upcoming_allocations(started):
    """The server's copy holds one fixed-size ciphertext per entry; nothing in clear."""
    length, entries = started.execute(
        "SELECT length, entries FROM allocation_lists WHERE stratum = 'cs-prague'"
    ).fetchone()
    assert len(entries) == length * allocation.RECORD_BYTES
    assert b"chat" not in entries and b"waitlist" not in entries


# --- The study log --------------------------------------------------------------------


def test_the_log_refuses_updates_and_deletes(started):
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        started.execute("UPDATE study_log SET day = '2027-01-01' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        started.execute("DELETE FROM study_log WHERE seq = 2")
    assert study_log.verify(started).seq == 6  # the start and five allocations


def drop_triggers(db) -> None:
    """What an operator with a shell can do."""
    for table in ("study_log", "allocations"):
        for change in ("update", "delete"):
            db.execute(f"DROP TRIGGER {table}_no_{change}")


TAMPERING = {
    "edited": ["UPDATE study_log SET detail = json_set(detail, '$.arm', 'another') WHERE seq = 3"],
    "edited day": ["UPDATE study_log SET day = '2027-02-28' WHERE seq = 3"],
    "deleted": ["DELETE FROM study_log WHERE seq = 3"],
    "reordered": [
        "UPDATE study_log SET seq = -1 WHERE seq = 3",
        "UPDATE study_log SET seq = 3 WHERE seq = 4",
        "UPDATE study_log SET seq = 4 WHERE seq = -1",
    ],
}


@pytest.mark.parametrize("how", TAMPERING)
def test_verify_names_the_first_tampered_row(started, how):
    study_log.verify(started)
    drop_triggers(started)
    for statement in TAMPERING[how]:
        started.execute(statement)
    with pytest.raises(study_log.StudyLogError) as caught:
        study_log.verify(started)
    assert caught.value.seq == 3, caught.value


def test_a_cut_off_end_is_caught_by_the_head_noted_down(started):
    noted = study_log.verify(started)
    drop_triggers(started)
    started.execute("DELETE FROM study_log WHERE seq = ?", [noted.seq])
    assert study_log.verify(started).seq == noted.seq - 1  # consistent by itself
    with pytest.raises(study_log.StudyLogError):
        study_log.verify(started, noted)


def test_the_log_takes_only_coded_values(started):
    with transaction(started), pytest.raises(ValueError):
        study_log.append(started, "consent", DAY, "P1", {"note": "I feel unsure today"})
    with transaction(started), pytest.raises(ValueError):
        study_log.append(started, "gossip", DAY, "P1", {})


# --- The commands -----------------------------------------------------------------------


@pytest.fixture
def cli_study(tmp_path, settings, statistician):
    """A data directory where ``stillroom study start`` ran, and its output."""
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    prepare_instance(settings)  # as the first serve does
    data_dir = settings.data_dir
    study_key = key_file(tmp_path / "study.pub", new_recipient_keypair()[0])
    statistician_key = key_file(tmp_path / "statistician.pub", statistician[0])
    first = run(
        data_dir,
        "start",
        "--study-key",
        str(study_key),
        "--statistician-key",
        str(statistician_key),
        study=folder,
    )
    assert first.returncode == 0, first.stderr
    return data_dir, first.stdout


def printed_commitments(output: str) -> dict[str, str]:
    return {
        line.split()[0]: line.split()[1]
        for line in output.splitlines()
        if line.startswith("  ") and len(line.split()) == 2
    }


def test_study_start_publishes_commitments_once(cli_study, tmp_path):
    data_dir, output = cli_study
    commitments = printed_commitments(output)
    assert set(commitments) == set(STRATA)
    assert (data_dir / study_log.SIGNING_KEY_FILE).stat().st_mode & 0o777 == 0o600
    again = run(
        data_dir,
        "start",
        "--study-key",
        str(tmp_path / "study.pub"),
        "--statistician-key",
        str(tmp_path / "statistician.pub"),
        study=tmp_path / "study",
    )
    assert again.returncode == 1 and "started here already" in again.stderr


def test_study_verify_prints_a_signed_head(cli_study):
    data_dir, _ = cli_study
    result = run(data_dir, "verify")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    head = study_log.Head.parse(lines["Head"])
    assert head.seq == 1
    assert study_log.check_head_signature(
        "example-waitlist",
        head,
        base64.b64decode(lines["Signature"]),
        base64.b64decode(lines["Signing key"]),
    )
    assert run(data_dir, "verify", "--head", str(head)).returncode == 0
    db = connect(data_dir / "stillroom.db")
    try:
        drop_triggers(db)
        db.execute("UPDATE study_log SET day = '2020-01-01' WHERE seq = 1")
    finally:
        db.close()
    broken = run(data_dir, "verify")
    assert broken.returncode == 1 and "row 1" in broken.stderr


def allocate_some(data_dir: Path, count: int) -> None:
    db = connect(data_dir / "stillroom.db")
    try:
        for number in range(count):
            allocation.allocate(db, f"P{number}", STRATA[number % 2], DAY)
    finally:
        db.close()


def test_reveal_accepts_the_true_lists_and_refuses_a_changed_one(cli_study, statistician, tmp_path):
    data_dir, output = cli_study
    allocate_some(data_dir, 12)
    secret = key_file(tmp_path / "statistician.key", statistician[1])
    revealed = run(data_dir, "reveal", "--secret-key", str(secret))
    assert revealed.returncode == 0, revealed.stderr
    assert "12 allocations match" in revealed.stderr
    lists = json.loads(revealed.stdout)["strata"]
    published = printed_commitments(output)
    for stratum, made in lists.items():
        # Anyone can recompute the commitment from what the reveal printed.
        recomputed = allocation.AllocationList(
            stratum, bytes.fromhex(made["salt"]), tuple(map(tuple, made["blocks"]))
        ).commitment()
        assert recomputed == made["commitment"] == published[stratum]
    # A list swapped for another, sealed to the same (public) key, is refused.
    changed = lists["en-berlin"]
    changed["blocks"][0] = list(reversed(changed["blocks"][0]))
    if changed["blocks"][0] == lists["en-berlin"]["blocks"][0]:
        changed["blocks"][0], changed["blocks"][1] = changed["blocks"][1], changed["blocks"][0]
    forged = json.dumps({**changed, "stratum": "en-berlin"}).encode()
    db = connect(data_dir / "stillroom.db")
    try:
        db.execute(
            "UPDATE allocation_lists SET sealed = ? WHERE stratum = 'en-berlin'",
            [seal(forged, statistician[0])],
        )
    finally:
        db.close()
    refused = run(data_dir, "reveal", "--secret-key", str(secret))
    assert refused.returncode == 1
    assert "en-berlin: the list does not match its commitment" in refused.stderr


def test_reveal_refuses_an_allocation_that_is_not_its_lists(cli_study, statistician, tmp_path):
    data_dir, _ = cli_study
    allocate_some(data_dir, 4)
    db = connect(data_dir / "stillroom.db")
    try:
        drop_triggers(db)
        db.execute(
            "UPDATE allocations SET arm = CASE arm WHEN 'chat' THEN 'waitlist' ELSE 'chat' END"
            " WHERE pseudonym = 'P2'"
        )
    finally:
        db.close()
    secret = key_file(tmp_path / "statistician.key", statistician[1])
    refused = run(data_dir, "reveal", "--secret-key", str(secret))
    assert refused.returncode == 1 and "P2" in refused.stderr


def test_the_audit_fails_on_a_broken_chain(cli_study):
    data_dir, _ = cli_study
    allocate_some(data_dir, 3)

    def audit() -> dict:
        result = subprocess.run(
            [STILLROOM, "audit", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=stillroom_env(data_dir, 0),
            check=False,
        )
        return {check["name"]: check for check in json.loads(result.stdout)["checks"]}

    assert audit()["study-log"]["ok"], audit()
    db = connect(data_dir / "stillroom.db")
    try:
        drop_triggers(db)
        db.execute("DELETE FROM study_log WHERE seq = 2")
    finally:
        db.close()
    check = audit()["study-log"]
    assert not check["ok"] and "row 2" in check["detail"]
