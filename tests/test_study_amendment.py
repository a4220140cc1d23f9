"""A started study changes only through a logged amendment, never behind the log's back."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.instance import lock_data_dir, prepare_instance
from stillroom.webapp.store import connect
from stillroom.webapp.study.amendment import StudyChangedError
from stillroom.webapp.study.definition import load_study

from support import stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"


def stillroom(data_dir: Path, *args: str, study: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=stillroom_env(data_dir, 0, {"STILLROOM_STUDY": str(study)}),
        check=False,
    )


def key_file(path: Path) -> Path:
    path.write_text(base64.b64encode(new_recipient_keypair()[0]).decode() + "\n")
    return path


@pytest.fixture
def started(tmp_path, settings):
    """The example study, copied and started in a data directory; its folder."""
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    prepare_instance(settings)
    keys = ("--study-key", str(key_file(tmp_path / "s.pub")))
    keys += ("--statistician-key", str(key_file(tmp_path / "t.pub")))
    result = stillroom(settings.data_dir, "study", "start", *keys, study=folder)
    assert result.returncode == 0, result.stderr
    return folder


def add_consent_version(folder: Path, version: str, kind: str) -> None:
    """Add a consent version (a copy of the current texts with a new sentence) and ask for it."""
    shutil.copytree(folder / "consent" / "1.1", folder / "consent" / version)
    for text in (folder / "consent" / version).glob("*.toml"):
        text.write_text(
            text.read_text().replace('body = """', 'body = """Version ' + version + ". ")
        )
    toml = folder / "study.toml"
    changed = toml.read_text().replace('current = "1.1"', f'current = "{version}"')
    changed += f'\n[[consent.versions]]\nversion = "{version}"\nfolder = "consent/{version}"\n'
    changed += f'kind = "{kind}"\n'
    toml.write_text(changed)


def log_events(settings) -> list[tuple[str, str]]:
    db = connect(settings.database_path)
    try:
        return [
            tuple(row) for row in db.execute("SELECT event, detail FROM study_log ORDER BY seq")
        ]
    finally:
        db.close()


def test_a_changed_folder_is_refused_until_the_change_is_logged(started, settings):
    add_consent_version(started, "2.0", "major")
    study_settings = dataclasses.replace(settings, study=str(started))
    with pytest.raises(StudyChangedError, match="study amend"):
        create_participant_app(study_settings)
    served = stillroom(settings.data_dir, "serve", "--no-tor", study=started)
    assert served.returncode == 1 and "stillroom study amend" in served.stderr
    assert "Traceback" not in served.stderr

    amended = stillroom(settings.data_dir, "study", "amend", study=started)
    assert amended.returncode == 0, amended.stderr
    assert "consent-version: 2.0 (major)" in amended.stdout
    events = [event for event, _ in log_events(settings)]
    assert events[-2:] == ["amendment", "consent-version"]
    create_participant_app(study_settings)  # now it runs
    verified = stillroom(settings.data_dir, "study", "verify", study=started)
    assert verified.returncode == 0, verified.stderr


def test_an_amendment_cannot_touch_what_the_lists_were_made_from(started, settings):
    toml = started / "study.toml"
    toml.write_text(toml.read_text().replace("block_sizes = [2, 4, 6]", "block_sizes = [2, 4]"))
    before = log_events(settings)
    amended = stillroom(settings.data_dir, "study", "amend", study=started)
    assert amended.returncode == 1
    assert "allocation lists" in amended.stderr
    assert log_events(settings) == before


def test_an_unchanged_folder_has_nothing_to_amend(started, settings):
    amended = stillroom(settings.data_dir, "study", "amend", study=started)
    assert amended.returncode == 1 and "nothing to amend" in amended.stderr


def test_an_amendment_cannot_open_the_waitlist_arm(started, settings):
    """What an arm gets is part of what the lists were made from: a waitlist stays one."""
    toml = started / "study.toml"
    text = toml.read_text()
    waiting = text.index('gets = "waitlist"')
    toml.write_text(
        text[:waiting]
        + text[waiting:]
        .replace('gets = "waitlist"', 'gets = "chat"', 1)
        .replace("waitlist_weeks = 4\n", "", 1)
    )
    amended = stillroom(settings.data_dir, "study", "amend", study=started)
    assert amended.returncode == 1 and "allocation lists" in amended.stderr


def test_a_changed_table_column_does_not_let_a_changed_folder_run(started, settings):
    """The study log, not a column anyone with the database can write, says which folder runs."""
    add_consent_version(started, "2.0", "major")
    changed = dataclasses.replace(settings, study=str(started))
    db = connect(settings.database_path)
    try:
        db.execute("UPDATE study SET definition_sha256 = ?", [load_study(started).sha256])
        db.conn.commit()
    finally:
        db.close()
    with pytest.raises(StudyChangedError):
        create_participant_app(changed)


def test_amend_waits_for_serve_to_stop(started, settings):
    """A running serve keeps the rules it read at start: amending under it is refused."""
    add_consent_version(started, "2.0", "major")
    held = lock_data_dir(settings, "no-tor")  # as a running serve holds it
    try:
        amended = stillroom(settings.data_dir, "study", "amend", study=started)
    finally:
        os.close(held)
    assert amended.returncode == 1 and "stop it, amend, then start it again" in amended.stderr
    assert stillroom(settings.data_dir, "study", "amend", study=started).returncode == 0
