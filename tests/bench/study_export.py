"""The study export with 1,000 participants of 8 timepoints each: time and peak memory.

Copies the example study and extends its schedule to 8 timepoints, starts it in a
throwaway data directory, puts ``--participants`` accounts through the real intake code
(consent, screening, baseline with allocation) spread over the five strata, and stores
the 7 later forms of each as the schedule does (sealed to the study key, locked under
the research slot). Then it runs the export as ``stillroom study export`` does, once
timed and once under ``tracemalloc`` for the peak of Python's allocations, and opens
the result as ``open-export`` does. Prints the figures and, last,
``participants=N forms=N export_s=X peak_mib=X maxrss_mib=X archive_bytes=N open_s=X``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/study_export.py [--participants 1000]
"""

from __future__ import annotations

import argparse
import datetime
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.keyslots import lock
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import export, log
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.study.questionnaires import seal_answers

from enrolment import randomise, start, study_settings

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "study"
DAY = datetime.date(2027, 3, 1)
#: Three more fortnightly timepoints after week 8: baseline and 7 later ones.
MORE_TIMEPOINTS = "".join(
    f'\n[[schedule]]\nid = "week-{week}"\ninstrument = "wellbeing"\nweek = {week}\n'
    "opens_days = -2\ncloses_days = 7\n"
    for week in (10, 12, 14)
)
CHOICES = ("never", "rarely", "sometimes", "often")


def answers_for(study, number: int) -> dict[str, str]:
    """Return a full wellbeing form whose answers vary with ``number``."""
    items = study.instruments["wellbeing"].items
    return {item.id: CHOICES[(number + index) % 4] for index, item in enumerate(items)}


def build(folder: Path, participants: int) -> tuple:
    """Start the study and fill it; return its settings, definition and keys."""
    study_folder = folder / "study"
    shutil.copytree(EXAMPLE, study_folder)
    toml = study_folder / "study.toml"
    toml.write_text(toml.read_text() + MORE_TIMEPOINTS)
    study = load_study(study_folder)
    assert len(study.schedule) == 8
    settings = study_settings(folder / "instance", study_folder)
    study_public, study_secret = new_recipient_keypair()
    start(settings, study, study_public, DAY)
    db = connect(settings.database_path)
    started = time.monotonic()
    try:
        for number in range(participants):
            language = study.languages[number % len(study.languages)]
            found, _ = randomise(db, study, DAY, answers_for(study, number), language)
            with transaction(db):
                for point in study.schedule[1:]:
                    day = DAY + datetime.timedelta(weeks=point.week)
                    sealed = seal_answers(answers_for(study, number + point.week), study_public)
                    db.table("study_answers").insert(
                        {
                            "pseudonym": found.pseudonym,
                            "instrument": point.instrument,
                            "timepoint": point.id,
                            "day": day.isoformat(),
                            "sealed": lock(db, found.slot, sealed),
                        }
                    )
                    detail: log.Detail = {"timepoint": point.id, "instrument": point.instrument}
                    log.append(db, "assessment-completed", day, found.pseudonym, detail)
        (forms,) = db.execute("SELECT count(*) FROM study_answers").fetchone()
    finally:
        db.close()
    print(f"built {participants} participants, {forms} forms in {time.monotonic() - started:.0f} s")
    return settings, study, study_secret, forms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-") as temporary:
        folder = Path(temporary)
        settings, study, study_secret, forms = build(folder, args.participants)
        recipient_public, recipient_secret = new_recipient_keypair()
        db = connect(settings.database_path)
        try:
            day = DAY + datetime.timedelta(weeks=20)
            started = time.monotonic()
            written = export.write_export(
                db, study, settings.data_dir, folder / "timed.sealed",
                recipient_public, study_secret, day,
            )  # fmt: skip
            export_s = time.monotonic() - started
            tracemalloc.start()
            export.write_export(
                db, study, settings.data_dir, folder / "traced.sealed",
                recipient_public, study_secret, day,
            )  # fmt: skip
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            db.close()
        seed = log.read_signing_key(settings.data_dir)
        assert seed is not None
        signing = bytes(nacl.signing.SigningKey(seed).verify_key)
        started = time.monotonic()
        export.open_export(folder / "timed.sealed", recipient_secret, signing, folder / "opened")
        open_s = time.monotonic() - started
        sizes = {name: (folder / "opened" / name).stat().st_size for name in export.FILES}
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"export: {export_s:.2f} s, {written.size:,} bytes sealed; files: {sizes}")
    print(f"peak of Python's allocations during an export: {peak / 2**20:.1f} MiB")
    print(f"open-export: {open_s:.2f} s; the process's peak resident size {maxrss_mib:.0f} MiB")
    print(
        f"participants={written.participants} forms={forms} export_s={export_s:.2f}"
        f" peak_mib={peak / 2**20:.1f} maxrss_mib={maxrss_mib:.0f}"
        f" archive_bytes={written.size} open_s={open_s:.2f}"
    )


if __name__ == "__main__":
    main()
