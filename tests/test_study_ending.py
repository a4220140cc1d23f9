"""The end of a study: no new intake after its last day, and its research data erased for good
on the day its definition sets, with the audit watching both."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from stillroom.crypto.slots import SLOT_BYTES
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp import audit
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.booking import AccountTooNewError
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.notes import save_note
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect
from stillroom.webapp.study.course import WaitlistError, may_book
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.therapists import add_therapist

from support import FAST_ARGON2, AuthActions, LoopbackClient, form_fields, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
LAST_DAY = load_study(EXAMPLE).ends
ERASE_DAY = LAST_DAY + timedelta(days=load_study(EXAMPLE).retention_days_after_end)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}
BASELINE = {
    **{item.id: "sometimes" for item in load_study(EXAMPLE).instruments["wellbeing"].items},
    **{"urge": "never", "self-harm": "never"},  # no safety rule fires
}
RESEARCH = (
    "study_answers",
    "study_consents",
    "study_participants",
    "allocations",
    "allocation_lists",
    "study_log",
)


def noon(day: date) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


def stillroom(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=stillroom_env(settings.data_dir, 0, {"STILLROOM_STUDY": str(settings.study)}),
        check=False,
    )


def key_file(path: Path) -> Path:
    path.write_text(base64.b64encode(new_recipient_keypair()[0]).decode() + "\n")
    return path


@pytest.fixture
def settings(tmp_path) -> Settings:
    """A study deployment where, outside the study, an account books a day after it is made.

    Accounts and notes are kept for ten years here, so that only the study's end removes
    anything.
    """
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    return Settings.load(
        {},
        data_dir=tmp_path / "instance",
        disk_reserve_mib=1,
        study=str(folder),
        booking_min_account_hours=24,
        accounts_per_minute=10_000,
        account_retention_days=3650,
        note_retention_days=3650,
        **FAST_ARGON2,
    )


@pytest.fixture
def started(tmp_path, settings) -> Settings:
    """The example study, started with the real command."""
    prepare_instance(settings)
    keys = ("--study-key", str(key_file(tmp_path / "s.pub")))
    keys += ("--statistician-key", str(key_file(tmp_path / "t.pub")))
    result = stillroom(settings, "study", "start", *keys)
    assert result.returncode == 0, result.stderr
    return settings


@pytest.fixture
def db(started):
    database = connect(started.database_path)
    yield database
    database.close()


def browser(settings, clock) -> LoopbackClient:
    app = create_participant_app(settings, clock=clock)
    app.test_client_class = LoopbackClient
    return app.test_client()


HIDDEN = re.compile(r'type="hidden" name="(form|page|version|text)" value="([^"]*)"')


def post_page(client, path: str, data: dict[str, str]):
    """Send the form on the page at ``path`` with ``data``, as a browser would."""
    html = client.get(path).get_data(as_text=True)
    hidden = dict(HIDDEN.findall(html))
    return client.post(path, data={**form_fields(html), **hidden, **data})


def consent(client) -> str:
    """A new account reads the information and consents; return its passphrase."""
    passphrase = AuthActions(client).create()
    client.get("/en/account")
    post_page(client, "/en/study/information", {})
    post_page(client, "/en/study/consent", {"participate": "yes", "questionnaires": "yes"})
    return passphrase


def allocate(client) -> str:
    """A new account goes through the whole intake, to an allocation; return its passphrase."""
    passphrase = consent(client)
    post_page(client, "/en/study/questions", ELIGIBLE)
    post_page(client, "/en/study/questions", BASELINE)  # the baseline's two pages
    post_page(client, "/en/study/questions", BASELINE)
    return passphrase


def participant_ids(db) -> list[str]:
    return [row[0] for row in db.execute("SELECT id FROM participants ORDER BY rowid")]


def count(db, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_the_day_after_the_last_day_a_new_account_gets_the_open_service(started, db, clock):
    clock.now = noon(date(2027, 3, 1))
    allocated = browser(started, clock)
    allocated_passphrase = allocate(allocated)
    clock.now = noon(LAST_DAY)  # the last day is a whole day of the study
    on_last_day = browser(started, clock)
    cut_short = consent(on_last_day)
    assert on_last_day.get("/en/account").location.endswith("/en/study")
    clock.now = noon(LAST_DAY + timedelta(days=1))
    new = browser(started, clock)
    AuthActions(new).create()
    account = new.get("/en/account")
    assert account.status_code == 200
    assert 'id="study-ended"' in account.get_data(as_text=True)
    assert 'id="study-ended"' in new.get("/en/study").get_data(as_text=True)
    assert 'id="study-ended"' in new.get("/en/study/information").get_data(as_text=True)
    old_id, cut_short_id, new_id = participant_ids(db)
    assert count(db, "study_participants") == 2  # nobody new was enrolled
    # Booking follows the open service's rule (an account books a day after it is made).
    assert isinstance(may_book(db, new_id, int(clock.now), started), AccountTooNewError)
    # An intake left unfinished on the last day stops there, calmly, and is never allocated.
    assert AuthActions(on_last_day).login(cut_short).status_code == 302
    assert on_last_day.get("/en/account").status_code == 200
    refused = post_page(on_last_day, "/en/study/questions", ELIGIBLE)
    assert 'id="study-ended"' in refused.get_data(as_text=True)
    assert isinstance(may_book(db, cut_short_id, int(clock.now), started), AccountTooNewError)
    assert count(db, "allocations") == 1
    # Someone allocated keeps their course.
    assert AuthActions(allocated).login(allocated_passphrase).status_code == 302
    assert allocated.get("/en/study/arm").status_code == 200
    assert 'id="study-ended"' not in allocated.get("/en/account").get_data(as_text=True)
    refusal = may_book(db, old_id, int(clock.now), started, load_study(Path(started.study)))
    assert refusal is None or isinstance(refusal, WaitlistError)  # the study's rules, kept


def research_slots(db) -> list[int]:
    return [
        int(row[0])
        for row in db.execute(
            "SELECT slot FROM study_participants WHERE slot IS NOT NULL"
            " UNION ALL SELECT slot FROM allocation_lists UNION ALL SELECT slot FROM notes"
        )
    ]


def slot_content(settings, slot: int) -> bytes:
    content = (settings.data_dir / "keys.slots").read_bytes()
    return content[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES]


def note_about(db, participant_id: str, now: int) -> None:
    """A therapist's note about the participant, kept longer than the study's data."""
    made = add_therapist(db, "Anna", ("en",), "Europe/Berlin", now)
    (therapist_id,) = db.execute(
        "SELECT id FROM therapists WHERE login_name = ?", [made.login_name]
    ).fetchone()
    db.execute(
        "UPDATE therapists SET public_key = ? WHERE id = ?",
        [new_recipient_keypair()[0], therapist_id],
    )
    db.table("pairs").insert(
        {"participant_id": participant_id, "therapist_id": therapist_id, "pseudonym": "KX7M-Q2PD"}
    )
    save_note(db, therapist_id, participant_id, "evenings are hard", now)


@pytest.fixture
def in_study(started, db, clock):
    """Two participants, one allocated (with a therapist's note), one cut short by the end."""
    clock.now = noon(date(2027, 3, 1))
    allocate(browser(started, clock))
    consent(browser(started, clock))
    note_about(db, participant_ids(db)[0], int(noon(LAST_DAY)))
    return started


def test_on_the_erasure_day_the_purge_erases_the_research_data_for_good(in_study, db, clock):
    settings = in_study
    slots = research_slots(db)
    assert len(slots) == 2 + len(load_study(EXAMPLE).strata()) + 1  # people, lists, a note
    purge(db, int(noon(ERASE_DAY - timedelta(days=1))), settings)
    assert all(count(db, table) for table in RESEARCH)  # kept until the erasure day
    assert count(db, "notes") == 1
    purge(db, int(noon(ERASE_DAY)), settings)
    assert {table: count(db, table) for table in RESEARCH} == dict.fromkeys(RESEARCH, 0)
    assert count(db, "notes") == 0
    assert all(slot_content(settings, slot) == bytes(SLOT_BYTES) for slot in slots)
    assert db.execute("SELECT erased_day FROM study").fetchone() == (ERASE_DAY.isoformat(),)
    assert count(db, "participants") == 2  # their accounts are theirs, not the study's
    # The log and the allocations are append-only again.
    db.execute("INSERT INTO study_log VALUES (1, '2029-07-01', 'start', NULL, '{}', x'', x'')")
    with pytest.raises(Exception, match="append-only"):
        db.execute("DELETE FROM study_log")
    # A participant who comes back finds the study over, and is not enrolled again.
    clock.now = noon(ERASE_DAY + timedelta(days=1))
    again = browser(settings, clock)
    AuthActions(again).create()
    assert 'id="study-ended"' in again.get("/en/account").get_data(as_text=True)
    assert count(db, "study_participants") == 0


def test_the_audit_passes_after_erasure_and_fails_when_a_row_is_put_back(in_study, db):
    settings, now = in_study, int(noon(ERASE_DAY))
    checks = (audit.check_retention, audit.check_study_log, audit.check_key_slots)
    overdue = audit.check_retention(db, settings, now)
    assert not overdue.ok and "study_answers" in overdue.detail  # the purge has not run yet
    purge(db, now, settings)
    results = [check(db, settings, now) for check in checks]
    assert all(result.ok for result in results), results
    db.execute("INSERT INTO study_log VALUES (1, '2029-07-01', 'start', NULL, '{}', x'', x'')")
    assert not audit.check_study_log(db, settings, now).ok
    assert not audit.check_retention(db, settings, now).ok


def test_an_amendment_moving_the_end_moves_both_days(started, db):
    assert db.execute("SELECT last_day, erase_day FROM study").fetchone() == (
        LAST_DAY.isoformat(),
        ERASE_DAY.isoformat(),
    )
    toml = Path(started.study) / "study.toml"
    toml.write_text(toml.read_text().replace(f"ends = {LAST_DAY}", "ends = 2028-12-31"))
    result = stillroom(started, "study", "amend")
    assert result.returncode == 0, result.stderr
    moved = date(2028, 12, 31)
    erase = moved + timedelta(days=load_study(EXAMPLE).retention_days_after_end)
    assert db.execute("SELECT last_day, erase_day FROM study").fetchone() == (
        moved.isoformat(),
        erase.isoformat(),
    )
    (detail,) = db.execute(
        "SELECT detail FROM study_log WHERE event = 'amendment' ORDER BY seq DESC"
    ).fetchone()
    logged = json.loads(detail)
    assert (logged["last-day"], logged["erase-day"]) == (moved.isoformat(), erase.isoformat())
