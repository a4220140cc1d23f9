"""Intake into a study, through the real pages and the real database: consent, screening,
baseline, one allocation, re-consent and withdrawal."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from stillroom.crypto.box import open_sealed
from stillroom.crypto.slots import SlotGoneError
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.booking import IntakeIncompleteError, SessionsStoppedError
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.keyslots import unlock
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect
from stillroom.webapp.study import allocation, amendment, course, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.course import WaitlistError, may_book
from stillroom.webapp.study.definition import load_study

from support import (
    FAST_ARGON2,
    NO_INTAKE_LIMITS,
    AuthActions,
    LoopbackClient,
    form_fields,
    stillroom_env,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
DAY = date(2027, 3, 1)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}
BASELINE = {
    **{item.id: "sometimes" for item in load_study(EXAMPLE).instruments["wellbeing"].items},
    **{"urge": "never", "self-harm": "never"},  # no safety rule fires
}


def baseline_answers(study) -> dict[str, str]:
    """An answer to every baseline item: each item's first option."""
    instrument = study.instruments[study.schedule[0].instrument]
    return {item.id: instrument.choices(item.id)[0] for item in instrument.items}


@pytest.fixture
def study_key() -> tuple[bytes, bytes]:
    return new_recipient_keypair()


def study_settings(tmp_path: Path, folder: Path) -> Settings:
    return Settings.load(
        {},
        data_dir=tmp_path / "instance",
        disk_reserve_mib=1,
        study=str(folder),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )


def start(settings: Settings, folder: Path, public_key: bytes) -> None:
    """Start the study in the data directory, as ``stillroom study start`` does."""
    prepare_instance(settings)
    definition = load_study(folder)
    db = connect(settings.database_path)
    try:
        keys = (public_key, new_recipient_keypair()[0])
        amendment.start(db, settings.data_dir, definition, DAY, keys, 40)
    finally:
        db.close()


def copy_example(tmp_path: Path, edit=None) -> Path:
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    if edit:
        toml = folder / "study.toml"
        toml.write_text(edit(toml.read_text()))
    return folder


@pytest.fixture
def study_env(tmp_path, clock, study_key):
    folder = copy_example(tmp_path)
    settings = study_settings(tmp_path, folder)
    start(settings, folder, study_key[0])
    return settings, folder


def client_for(settings, clock):
    app = create_participant_app(settings, clock=clock)
    app.test_client_class = LoopbackClient
    return app.test_client()


@pytest.fixture
def client(study_env, clock):
    return client_for(study_env[0], clock)


@pytest.fixture
def db(study_env):
    database = connect(study_env[0].database_path)
    yield database
    database.close()


HIDDEN = re.compile(r'type="hidden" name="(form|page|version|text)" value="([^"]*)"')


def post_page(client, path: str, data: dict[str, str]):
    """Send the form on the page at ``path`` with ``data``, as a browser would."""
    html = client.get(path).get_data(as_text=True)
    hidden = dict(HIDDEN.findall(html))
    return client.post(path, data={**form_fields(html), **hidden, **data})


def follow(client, response) -> str:
    assert response.status_code in (302, 303), response.get_data(as_text=True)
    return str(response.headers["Location"])


def through_consent(client, lang: str = "en") -> None:
    auth = AuthActions(client, lang)
    auth.create()
    assert follow(client, client.get(f"/{lang}/account")).endswith("/study")
    assert follow(client, client.get(f"/{lang}/study")).endswith("/study/information")
    assert follow(client, post_page(client, f"/{lang}/study/information", {})).endswith(
        "/study/consent"
    )
    consented = post_page(
        client, f"/{lang}/study/consent", {"participate": "yes", "questionnaires": "yes"}
    )
    assert consented.status_code == 200
    assert re.search(r'id="receipt">[A-Z2-7]{4}-[A-Z2-7]{4}<', consented.get_data(as_text=True))


def send_baseline(client, lang: str = "en"):
    """Answer the baseline's first page, then send its second (last) one; return that answer."""
    first = post_page(client, f"/{lang}/study/questions", BASELINE)
    assert follow(client, first).endswith("/study/questions")
    return post_page(client, f"/{lang}/study/questions", BASELINE)


def through_intake(client, lang: str = "en", screening=ELIGIBLE) -> str:
    """Walk a new account through intake; return where the last step led."""
    through_consent(client, lang)
    done = post_page(client, f"/{lang}/study/questions", screening)
    if not follow(client, done).endswith("/study/questions"):
        return follow(client, done)
    return follow(client, send_baseline(client, lang))


def only_participant(db) -> intake.Enrolment:
    (pid,) = db.execute("SELECT participant_id FROM study_participants").fetchone()
    found = intake.enrolment(db, pid)
    assert found is not None
    return found


def test_intake_asks_for_every_required_consent_before_going_on(client, db):
    AuthActions(client).create()
    client.get("/en/account")
    post_page(client, "/en/study/information", {})
    refused = post_page(client, "/en/study/consent", {"participate": "yes", "transcripts": "yes"})
    assert refused.status_code == 400
    assert only_participant(db).step == intake.CONSENT
    assert not db.execute("SELECT 1 FROM study_consents").fetchall()


def test_intake_ends_in_one_allocation_and_the_arm_page(client, db, study_key):
    assert follow(client, client.get("/en/account")).endswith("/login")
    assert through_intake(client).endswith("/study")
    arm_page = client.get("/en/study/arm").get_data(as_text=True)
    found = only_participant(db)
    arm, _ = intake.allocation_of(db, found.pseudonym)
    assert f'data-arm="{arm}"' in arm_page
    assert found.step == intake.DONE and found.stratum == "en-berlin"
    events = [entry.event for entry in study_log.entries(db) if entry.pseudonym == found.pseudonym]
    assert events == ["consent", "eligibility", "assessment-completed", "allocation"]
    assert study_log.entries(db, "eligibility")[0].detail == {
        "eligible": True,
        "stratum": "en-berlin",
    }
    completed = study_log.entries(db, "assessment-completed")[0]
    assert completed.detail == {"timepoint": "baseline", "instrument": "wellbeing"}
    consent = study_log.entries(db, "consent")[0].detail
    assert consent["participate"] is True and consent["transcripts"] is False
    # What the server keeps of the answers opens only with the study team's key.
    stored = db.execute(
        "SELECT instrument, timepoint, day, sealed FROM study_answers ORDER BY id"
    ).fetchall()
    assert [row[:2] for row in stored] == [("screening", "screening"), ("wellbeing", "baseline")]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", row[2]) for row in stored)  # days only
    opened = open_sealed(unlock(db, found.slot, stored[1][3]), study_key[1])
    assert json.loads(opened) == BASELINE
    assert found.draft is None


def test_sending_the_last_step_twice_allocates_once(client, db):
    through_consent(client)
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    follow(client, post_page(client, "/en/study/questions", BASELINE))  # its first page
    html = client.get("/en/study/questions").get_data(as_text=True)
    data = {**form_fields(html), "form": "baseline", "page": "1", **BASELINE}
    first = client.post("/en/study/questions", data=data)
    second = client.post("/en/study/questions", data=data)
    assert first.status_code == second.status_code == 302
    assert db.execute("SELECT count(*) FROM allocations").fetchone()[0] == 1
    assert len(study_log.entries(db, "allocation")) == 1
    pseudonym = only_participant(db).pseudonym
    with pytest.raises(allocation.AlreadyAllocatedError):
        allocation.allocate(db, pseudonym, "en-berlin", DAY)


def use_up_list(db, stratum: str, leave: int = 0) -> None:
    """Allocate others until the stratum's list has only ``leave`` entries left."""
    (length, used) = db.execute(
        "SELECT length, (SELECT count(*) FROM allocations WHERE stratum = ?)"
        " FROM allocation_lists WHERE stratum = ?",
        [stratum, stratum],
    ).fetchone()
    for number in range(used, length - leave):
        allocation.allocate(db, f"other-{number}", stratum, DAY)


def test_a_used_up_list_closes_enrolment_calmly_and_keeps_the_participant_where_they_are(
    client, db
):
    through_consent(client)
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    use_up_list(db, "en-berlin")
    closed = send_baseline(client)
    assert closed.status_code == 503
    page = closed.get_data(as_text=True)
    assert 'id="enrolment-closed"' in page and 'href="/en/help"' in page
    assert 'id="safety-help"' not in page  # no safety rule met
    found = only_participant(db)
    assert found.step == intake.BASELINE
    assert intake.allocation_of(db, found.pseudonym) is None
    # Nothing of the baseline was kept or logged: the transaction was rolled back.
    assert db.execute("SELECT timepoint FROM study_answers").fetchall() == [("screening",)]
    events = [entry.event for entry in study_log.entries(db) if entry.pseudonym == found.pseudonym]
    assert events == ["consent", "eligibility"]
    # The answers wait in the draft: coming back shows the form filled in.
    again = client.get("/en/study/questions").get_data(as_text=True)
    assert "value=sometimes checked" in again


def test_a_used_up_list_still_shows_crisis_help_first_when_a_safety_rule_is_met(client, db):
    through_consent(client)
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    use_up_list(db, "en-berlin")
    answers = {**BASELINE, "self-harm": "often"}
    assert follow(client, post_page(client, "/en/study/questions", answers)).endswith("/questions")
    closed = post_page(client, "/en/study/questions", answers)
    assert closed.status_code == 503
    page = closed.get_data(as_text=True)
    assert 'id="safety-help"' in page and 'id="enrolment-closed"' in page
    # Nothing was submitted, so no flag or log row claims a therapist will see it.
    assert db.execute("SELECT count(*) FROM safety_flags").fetchone() == (0,)
    assert study_log.entries(db, "safety-rule") == []


def test_study_verify_names_a_stratum_whose_list_runs_low(study_env, db):
    settings = study_env[0]

    def verify() -> str:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("stillroom")), "study", "verify"],
            capture_output=True,
            text=True,
            timeout=120,
            env=stillroom_env(settings.data_dir, 0),
            check=False,
        )
        assert result.returncode == 0, result.stderr  # a warning, not a broken log
        return result.stdout

    (length,) = db.execute("SELECT length FROM allocation_lists LIMIT 1").fetchone()
    use_up_list(db, "en-berlin", leave=length // 10 + 1)
    assert "Warning" not in verify()
    use_up_list(db, "en-berlin", leave=length // 10)
    warnings = [line for line in verify().splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and " en-berlin " in warnings[0]


def test_booking_waits_until_intake_is_complete(client, db, study_env):
    through_consent(client)
    found = only_participant(db)
    assert isinstance(may_book(db, found.participant_id, 0, study_env[0]), IntakeIncompleteError)
    assert follow(client, client.get("/en/book")).endswith("/account")
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    follow(client, send_baseline(client))
    refusal = may_book(db, found.participant_id, 0, study_env[0], load_study(study_env[1]))
    assert refusal is None or isinstance(refusal, WaitlistError)  # as the arm drawn says


def test_a_paged_form_resumes_where_it_was_left_and_keeps_no_readable_draft(client, db):
    through_consent(client)
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    found = only_participant(db)
    study = load_study(EXAMPLE)
    form = intake.current_form(study, found)
    session_key = db.execute("SELECT public_key FROM participants").fetchone()[0]
    # Four items a page: three pages for the ten items; the first one is answered.
    first_page = {item.id: BASELINE[item.id] for item in intake.form_page(form, 0, per_page=4)}
    with pytest.raises(intake.AnswersMissingError):
        intake.save_page(db, found.participant_id, session_key, b"", form, 0, {}, per_page=4)
    secret = new_recipient_keypair()
    intake.save_page(
        db, found.participant_id, secret[0], secret[1], form, 0, first_page, per_page=4
    )
    again = only_participant(db)
    answers = intake.draft_answers(db, again, form, secret[1])
    assert answers == first_page
    assert intake.page_number(form, answers, per_page=4) == 1
    assert b"sometimes" not in again.draft
    assert intake.draft_answers(db, again, form, new_recipient_keypair()[1]) == {}


def test_an_unfinished_forms_draft_is_as_long_whatever_was_chosen(client, db):
    through_consent(client)
    follow(client, post_page(client, "/en/study/questions", ELIGIBLE))
    found = only_participant(db)
    form = intake.current_form(load_study(EXAMPLE), found)
    keys = new_recipient_keypair()
    sizes = set()
    for option in ("never", "sometimes", "often"):
        page = {item.id: option for item in intake.form_page(form, 0, per_page=4)}
        db.execute("UPDATE study_participants SET draft = NULL, draft_form = NULL")
        intake.save_page(db, found.participant_id, *keys, form, 0, page, per_page=4)
        draft = only_participant(db)
        assert intake.draft_answers(db, draft, form, keys[1]) == page  # still opens as it was
        sizes.add(len(draft.draft))
    assert len(sizes) == 1, sizes


def test_someone_not_eligible_sees_help_and_cannot_book(client, db, study_env):
    led_to = through_intake(client, screening={**ELIGIBLE, "age": "no"})
    assert led_to.endswith("/study/not-eligible")
    page = client.get(led_to).get_data(as_text=True)
    assert "/en/help" in page and 'id="ineligible-delete"' not in page
    assert post_page(client, led_to, {}).status_code == 400  # only the study's rule deletes
    assert follow(client, client.get("/en/account")).endswith("/study")
    found = only_participant(db)
    assert found.step == intake.INELIGIBLE
    assert isinstance(may_book(db, found.participant_id, 0, study_env[0]), IntakeIncompleteError)
    # The log says only that they were not eligible, never which answer decided it.
    assert study_log.entries(db, "eligibility")[0].detail == {
        "eligible": False,
        "stratum": "en-berlin",
    }
    assert not db.execute("SELECT 1 FROM allocations").fetchall()


def test_someone_not_eligible_loses_the_account_when_the_study_says_delete(
    tmp_path, clock, study_key
):
    folder = copy_example(
        tmp_path,
        lambda text: text.replace('ineligible_account = "keep"', 'ineligible_account = "delete"'),
    )
    settings = study_settings(tmp_path, folder)
    start(settings, folder, study_key[0])
    client = client_for(settings, clock)
    led_to = through_intake(client, screening={**ELIGIBLE, "recent-use": "no"})
    db = connect(settings.database_path)
    try:
        # Loading the page (twice, as a reload or a prefetch would) deletes nothing.
        for _ in range(2):
            page = client.get(led_to)
            assert page.status_code == 200 and "/en/help" in page.get_data(as_text=True)
            assert 'id="ineligible-delete"' in page.get_data(as_text=True)
        assert db.execute("SELECT count(*) FROM participants").fetchone()[0] == 1
        assert follow(client, client.get("/en/account")).endswith("/study")
        deleted = post_page(client, led_to, {})
        assert deleted.status_code == 200
        assert 'id="ineligible-deleted"' in deleted.get_data(as_text=True)
        assert "/en/help" in deleted.get_data(as_text=True)
        assert not db.execute("SELECT 1 FROM participants").fetchall()
        assert not db.execute("SELECT 1 FROM study_participants").fetchall()
        assert study_log.entries(db, "eligibility")[0].detail == {
            "eligible": False,
            "stratum": "en-berlin",
        }
    finally:
        db.close()
    assert follow(client, client.get("/en/account")).endswith("/login")


def test_a_new_major_version_asks_for_consent_again_but_leaves_help_open(
    client, db, study_env, clock, tmp_path
):
    settings, folder = study_env
    through_intake(client)
    passphrase_page = client.get("/en/account")
    assert passphrase_page.status_code == 200
    # An amendment: consent 2.0, a major version, with the texts of 1.1.
    shutil.copytree(folder / "consent" / "1.1", folder / "consent" / "2.0")
    toml = folder / "study.toml"
    toml.write_text(
        toml.read_text().replace('current = "1.1"', 'current = "2.0"')
        + '\n[[consent.versions]]\nversion = "2.0"\nfolder = "consent/2.0"\nkind = "major"\n'
    )
    amendment.amend(db, load_study(folder), date(2027, 1, 4))  # as 'stillroom study amend'
    amended = client_for(settings, clock)
    cookie = client.get_cookie("stillroom", domain="127.0.0.1")
    amended.set_cookie("stillroom", cookie.value, domain="127.0.0.1")  # the same browser
    assert follow(amended, amended.get("/en/account")).endswith("/study/consent")
    assert follow(amended, amended.get("/en/book")).endswith("/study/consent")
    assert amended.get("/en/help").status_code == 200
    assert post_page(amended, "/en/study/consent", {"participate": "yes"}).status_code == 400
    again = post_page(amended, "/en/study/consent", {"participate": "yes", "questionnaires": "yes"})
    assert again.status_code == 200
    assert amended.get("/en/account").status_code == 200
    found = only_participant(db)
    assert found.consent_version == "2.0"
    changes = study_log.entries(db, "consent-version")
    assert [entry.detail for entry in changes if entry.pseudonym] == [
        {"from": "1.1", "to": "2.0", "kind": "major"}
    ]


TICKED = {"participate": "yes", "questionnaires": "yes"}


def shown_consent(client, lang: str = "en") -> dict[str, str]:
    """Open the consent page at intake; return its form as sent back with both boxes ticked."""
    AuthActions(client, lang).create()
    client.get(f"/{lang}/account")
    post_page(client, f"/{lang}/study/information", {})
    html = client.get(f"/{lang}/study/consent").get_data(as_text=True)
    hidden = dict(re.findall(r'type="hidden" name="(version|text)" value="([^"]*)"', html))
    return {**form_fields(html), **hidden, **TICKED}


def test_consent_is_refused_for_a_text_changed_since_the_page_was_shown(
    client, db, study_env, clock
):
    settings, folder = study_env
    sent = shown_consent(client)
    assert sent["version"] == "1.1" and re.fullmatch(r"[0-9a-f]{64}", sent["text"])
    # Meanwhile the study team amends: a new major version with another text.
    shutil.copytree(folder / "consent" / "1.1", folder / "consent" / "2.0")
    en = folder / "consent" / "2.0" / "en.toml"
    en.write_text(en.read_text().replace("study", "study (and a new use of your data)", 1))
    toml = folder / "study.toml"
    toml.write_text(
        toml.read_text().replace('current = "1.1"', 'current = "2.0"')
        + '\n[[consent.versions]]\nversion = "2.0"\nfolder = "consent/2.0"\nkind = "major"\n'
    )
    amendment.amend(db, load_study(folder), date(2027, 3, 2))
    amended = client_for(settings, clock)  # the server restarted with the amended study
    cookie = client.get_cookie("stillroom", domain="127.0.0.1")
    amended.set_cookie("stillroom", cookie.value, domain="127.0.0.1")
    refused = amended.post("/en/study/consent", data=sent)
    assert refused.status_code == 400
    page = refused.get_data(as_text=True)
    assert "has changed since this page was opened" in page
    assert "a new use of your data" in page and 'name="version" value="2.0"' in page
    assert "checked" not in page  # the boxes are ticked again, for the text now shown
    assert not db.execute("SELECT 1 FROM study_consents").fetchall()
    assert only_participant(db).step == intake.CONSENT
    # Sent again from the page now shown, it is recorded for that text.
    assert post_page(amended, "/en/study/consent", TICKED).status_code == 200
    assert db.execute("SELECT version FROM study_consents").fetchall() == [("2.0",)]


def test_consent_is_refused_when_the_language_changed_in_between(client, db):
    sent = shown_consent(client, "en")
    refused = client.post("/de/study/consent", data=sent)
    assert refused.status_code == 400
    assert not db.execute("SELECT 1 FROM study_consents").fetchall()
    assert post_page(client, "/de/study/consent", TICKED).status_code == 200
    study = load_study(EXAMPLE)
    (text,) = db.execute("SELECT text_sha256 FROM study_consents").fetchone()
    assert text == study.consent().texts["de"].sha256 != sent["text"]


def test_a_minor_version_only_shows_a_notice(client, db, study_env):
    through_intake(client)
    found = only_participant(db)
    db.execute(
        "UPDATE study_participants SET consent_version = '1.0' WHERE participant_id = ?",
        [found.participant_id],
    )
    page = client.get("/en/account").get_data(as_text=True)
    assert 'id="consent-news"' in page
    html = client.get("/en/study/consent/current").get_data(as_text=True)
    read = client.post("/en/study/consent/read", data=form_fields(html))
    assert follow(client, read).endswith("/account")
    assert 'id="consent-news"' not in client.get("/en/account").get_data(as_text=True)
    changes = study_log.entries(db, "consent-version")
    assert [entry.detail for entry in changes] == [{"from": "1.0", "to": "1.1", "kind": "minor"}]


@pytest.mark.parametrize("level", [intake.STOP_SESSIONS, intake.STOP_QUESTIONNAIRES])
def test_stopping_sessions_or_questionnaires_is_logged_and_kept_apart(client, db, study_env, level):
    through_intake(client)
    response = post_page(client, "/en/study/withdraw", {"level": level})
    assert "done=" + level in follow(client, response)
    found = only_participant(db)
    assert found.sessions_stopped is (level == intake.STOP_SESSIONS)
    assert found.questionnaires_stopped is (level == intake.STOP_QUESTIONNAIRES)
    refusal = may_book(db, found.participant_id, 0, study_env[0])
    assert isinstance(refusal, SessionsStoppedError) is (level == intake.STOP_SESSIONS)
    assert study_log.entries(db, "withdrawal")[0].detail["level"] == level
    assert db.execute("SELECT count(*) FROM study_answers").fetchone()[0] == 2


def test_withdraw_and_erase_destroys_the_research_key(client, db, study_env, study_key):
    through_intake(client)
    before = only_participant(db)
    (sealed,) = db.execute("SELECT sealed FROM study_answers LIMIT 1").fetchone()
    assert client.get("/en/study/withdraw/erase").status_code == 200
    assert only_participant(db).erased is False  # the page alone changes nothing
    follow(client, post_page(client, "/en/study/withdraw/erase", {}))
    after = only_participant(db)
    assert after.erased and after.slot is None
    assert not db.execute("SELECT 1 FROM study_answers").fetchall()
    assert not db.execute("SELECT 1 FROM study_consents").fetchall()
    with pytest.raises(SlotGoneError):
        unlock(db, before.slot, sealed)
    events = [entry.event for entry in study_log.entries(db) if entry.pseudonym == before.pseudonym]
    assert events == ["consent", "eligibility", "assessment-completed", "allocation", "withdrawal"]
    study_log.verify(db)
    assert client.get("/en/account").status_code == 200
    assert isinstance(may_book(db, after.participant_id, 0, study_env[0]), SessionsStoppedError)


def test_after_withdraw_and_erase_nothing_links_the_account_to_the_study_log(client, db, study_env):
    through_intake(client)
    before = only_participant(db)
    follow(client, post_page(client, "/en/study/withdraw/erase", {}))
    after = only_participant(db)
    # What a seized disk could join: account -> pseudonym -> log and allocation.
    assert after.pseudonym != before.pseudonym and re.fullmatch(r"[0-9a-f]{20}", after.pseudonym)
    for table in ("study_log", "allocations"):
        linked = db.execute(
            f"SELECT count(*) FROM {table} WHERE pseudonym = ?",
            [after.pseudonym],
        ).fetchone()[0]
        assert linked == 0, table
    # Nor does the row still say how far they came (done means "found eligible").
    assert after.step == intake.WITHDRAWN and after.consent_version is None
    assert after.erased and after.sessions_stopped and after.questionnaires_stopped
    # They stay out of the study: no course, no booking, no intake again.
    assert course.study_participant(db, after.participant_id) is None
    assert isinstance(may_book(db, after.participant_id, 0, study_env[0]), SessionsStoppedError)
    assert follow(client, client.get("/en/study")).endswith("/account")
    assert follow(client, client.get("/en/study/consent")).endswith("/account")
    assert client.get("/en/account").status_code == 200
    # Neither the stratum, the rows' order nor the day the account was made (its first
    # consent's day) lead from the account to the log's entries.
    assert db.execute(
        "SELECT created_day FROM participants WHERE id = ?", [before.participant_id]
    ).fetchone() == (None,)
    assert db.execute(
        "SELECT stratum FROM study_participants WHERE participant_id = ?", [before.participant_id]
    ).fetchone() == ("",)
    assert (
        "WITHOUT ROWID"
        in db.execute("SELECT sql FROM sqlite_master WHERE name = 'study_participants'").fetchone()[
            0
        ]
    )


def test_deleting_the_account_destroys_the_research_key(client, db):
    through_intake(client)
    found = only_participant(db)
    (sealed,) = db.execute("SELECT sealed FROM study_answers LIMIT 1").fetchone()
    follow(client, post_page(client, "/en/account/delete", {}))
    assert not db.execute("SELECT 1 FROM study_participants").fetchall()
    assert not db.execute("SELECT 1 FROM study_answers").fetchall()
    with pytest.raises(SlotGoneError):
        unlock(db, found.slot, sealed)


def test_the_waitlist_ends_the_arms_weeks_after_allocation():
    study = load_study(EXAMPLE)
    assert intake.waitlist_ends(study, "waitlist", DAY) == date(2027, 3, 29)
    assert intake.waitlist_ends(study, "chat", DAY) is None


def test_open_mode_has_no_study_pages(app):
    open_client = app.test_client()
    AuthActions(open_client).create()
    assert open_client.get("/en/account").status_code == 200
    assert open_client.get("/en/study").status_code == 404


def test_a_waitlisted_participant_cannot_book_even_where_the_study_is_not_passed(
    client, db, study_env
):
    """The booking gate fails closed: in a study, no caller can open the control arm."""
    settings = study_env[0]
    for _ in range(6):  # blocks of 2 to 6 at 1:1: six intakes reach both arms
        through_intake(client_for(settings, client.application.config["CLOCK"]))
    rows = db.execute(
        "SELECT sp.participant_id, a.arm FROM study_participants sp"
        " JOIN allocations a ON a.pseudonym = sp.pseudonym"
    ).fetchall()
    waitlisted = [participant for participant, arm in rows if arm == "waitlist"]
    assert waitlisted
    assert may_book(db, waitlisted[0], 0, settings) is not None
    assert may_book(db, waitlisted[0], 0, settings, load_study(study_env[1])) is not None
