"""Participants put through the real intake code, for the export's tests and benchmark.

Accounts are made by :func:`stillroom.webapp.accounts.create_account` (fast argon2) and
then go through :mod:`stillroom.webapp.study.intake` as the pages would call it.
"""

from __future__ import annotations

import datetime
import secrets
import subprocess
import sys
from pathlib import Path

from sqlite_utils import Database

from stillroom.crypto.kdf import FAST_FOR_TESTS, KeyDeriver
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.accounts import create_account
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect
from stillroom.webapp.study import amendment, intake
from stillroom.webapp.study.definition import Study

from support import FAST_ARGON2, NO_INTAKE_LIMITS

DERIVER = KeyDeriver(FAST_FOR_TESTS, 1, 30)
LOOKUP_KEY = secrets.token_bytes(32)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}


def study_settings(data_dir: Path, folder: Path) -> Settings:
    """Return the settings of a deployment that runs the study in ``folder``."""
    return Settings.load(
        {},
        data_dir=data_dir,
        disk_reserve_mib=1,
        study=str(folder),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )


def start(
    settings: Settings,
    study: Study,
    study_public_key: bytes,
    day: datetime.date,
    per_stratum: int | None = None,
) -> None:
    """Start ``study`` in the data directory, as ``stillroom study start`` does."""
    prepare_instance(settings)
    db = connect(settings.database_path)
    try:
        keys = (study_public_key, new_recipient_keypair()[0])
        amendment.start(db, settings.data_dir, study, day, keys, per_stratum)
    finally:
        db.close()


def new_account(db: Database, day: datetime.date) -> str:
    """Make an account as the create page does; return its id."""
    passphrase = " ".join(secrets.token_hex(4) for _ in range(7))
    return create_account(db, DERIVER, LOOKUP_KEY, passphrase, day.isoformat()).participant_id


def consent(
    db: Database,
    study: Study,
    day: datetime.date,
    language: str = "en",
    transcripts: bool = False,
) -> intake.Enrolment:
    """Make an account and take it through information and consent; return its enrolment."""
    participant_id = new_account(db, day)
    intake.enrol(db, participant_id, study.stratum_of(language))
    intake.read_information(db, participant_id)
    version = study.consent(study.consent_current)
    ticked = {"participate", "questionnaires"} | ({"transcripts"} if transcripts else set())
    shown = (version.version, version.texts[language].sha256)
    intake.give_consent(db, study, participant_id, language, ticked, day, shown)
    found = intake.enrolment(db, participant_id)
    assert found is not None
    return found


def randomise(
    db: Database,
    study: Study,
    day: datetime.date,
    baseline: dict[str, str],
    language: str = "en",
    transcripts: bool = False,
) -> tuple[intake.Enrolment, str]:
    """Take a new participant through the whole intake; return the enrolment and the arm."""
    found = consent(db, study, day, language, transcripts)
    assert intake.submit_screening(db, study, found.participant_id, ELIGIBLE, day)
    arm, _ = intake.submit_baseline(db, study, found.participant_id, baseline, day)
    return found, arm


#: The installed ``stillroom`` command, beside the test's Python.
STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def run_study(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a ``stillroom study`` command as the study team does; its output is returned."""
    return subprocess.run(
        [STILLROOM, "study", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
