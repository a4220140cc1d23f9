"""Safety rules, through the real pages and the real database: a rule fires at its
threshold, the participant sees crisis help at once, the study log and the flag keep
no answers, the therapist sees the flag until they mark it seen, a site's lead lists
participants who have no therapist yet, and the flag goes with the data it belongs to."""

from __future__ import annotations

import dataclasses
import datetime
import re

import pytest
from test_cli import run, therapist_env
from test_study_intake import (
    DAY,
    ELIGIBLE,
    EXAMPLE,
    client_for,
    copy_example,
    follow,
    post_page,
    start,
    study_settings,
    through_consent,
)

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.accounts import delete_account
from stillroom.webapp.app import create_portal_app
from stillroom.webapp.retention import erase_study
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import intake, safety
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study
from stillroom.webapp.therapists import set_lead, set_site

from support import SLOT, AuthActions, LoopbackClient, TherapistActions, form_fields, rows

STUDY = load_study(EXAMPLE)
WELLBEING = STUDY.instruments["wellbeing"]
CALM = {item.id: "never" for item in WELLBEING.items}
CRISIS_LINE = "Listening line 0800 111 0 111"
#: The words of the self-harm item, which the pages after it must never repeat.
SELF_HARM_WORDS = WELLBEING.texts["en"].items["self-harm"]


@pytest.fixture
def settings(tmp_path):
    folder = copy_example(tmp_path)
    found = dataclasses.replace(study_settings(tmp_path, folder), crisis_lines_en=CRISIS_LINE)
    start(found, folder, new_recipient_keypair()[0])
    return found


@pytest.fixture
def db(settings):
    database = connect(settings.database_path)
    yield database
    database.close()


@pytest.fixture
def therapist(settings, clock) -> TherapistActions:
    portal = create_portal_app(settings, clock=clock)
    portal.test_client_class = LoopbackClient
    return TherapistActions(portal.test_client(), clock, settings.database_path)


def baseline_response(settings, clock, lang: str = "en", **chosen: str):
    """Walk a new account through intake; return the answer to its baseline."""
    client = client_for(settings, clock)
    through_consent(client, lang)
    assert follow(client, post_page(client, f"/{lang}/study/questions", ELIGIBLE)).endswith(
        "/study/questions"
    )
    answers = {**CALM, **chosen}
    first = post_page(client, f"/{lang}/study/questions", answers)  # the form has two pages
    assert follow(client, first).endswith("/study/questions")
    return client, post_page(client, f"/{lang}/study/questions", answers)


def participant_of(db, pseudonym: str) -> str:
    [(participant_id,)] = db.execute(
        "SELECT participant_id FROM study_participants WHERE pseudonym = ?", [pseudonym]
    ).fetchall()
    return str(participant_id)


@pytest.mark.parametrize(
    ("item", "option", "rule"),
    [
        ("self-harm", "rarely", None),
        ("self-harm", "sometimes", "self-harm-sometimes"),
        ("self-harm", "often", "self-harm-sometimes"),
        ("urge", "sometimes", None),
        ("urge", "often", "urge-often"),
    ],
)
def test_a_rule_fires_at_its_threshold_and_not_below_it(item, option, rule):
    hits = safety.fired(STUDY, WELLBEING, {**CALM, item: option})
    assert [hit.id for hit in hits] == ([rule] if rule else [])


def test_a_rule_on_a_score_fires_on_the_scores_sum(tmp_path):
    folder = copy_example(tmp_path, lambda text: text.replace('item = "urge"', 'score = "urge"'))
    study = load_study(folder)
    assert [hit.id for hit in safety.fired(study, "wellbeing", {**CALM, "urge": "often"})] == [
        "urge-often"
    ]
    assert safety.fired(study, "wellbeing", {**CALM, "urge": "sometimes"}) == []


def test_a_fired_rule_shows_crisis_help_at_once_and_keeps_no_answers(settings, clock, db):
    client, answer = baseline_response(settings, clock, **{"self-harm": "often"})
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert 'id="safety-help"' in page
    assert CRISIS_LINE in page and 'href="/en/help"' in page
    assert SELF_HARM_WORDS not in page and "often" not in page.lower()
    # The way on leads where the baseline leads: the participant was allocated as anyone.
    [onward] = re.findall(r'id="study-next" href="([^"]+)"', page)
    assert follow(client, client.get(onward)).endswith("/en/study/arm")
    [(pseudonym, step)] = db.execute("SELECT pseudonym, step FROM study_participants").fetchall()
    assert step == intake.DONE
    [entry] = study_log.entries(db, "safety-rule")
    today = datetime.datetime.fromtimestamp(clock(), datetime.UTC).date().isoformat()
    assert (entry.pseudonym, entry.day) == (pseudonym, today)
    assert entry.detail == {"rule": "self-harm-sometimes", "timepoint": "baseline"}
    [flag] = safety.open_flags(db)
    assert (flag.pseudonym, flag.rule, flag.timepoint, flag.site) == (
        pseudonym,
        "self-harm-sometimes",
        "baseline",
        "berlin",
    )
    assert not flag.has_therapist
    # Neither the log nor the flags hold anything of the answers.
    stored = rows(settings, "SELECT * FROM safety_flags") + rows(
        settings, "SELECT detail FROM study_log"
    )
    assert not any(option in repr(stored) for option in ("often", "never"))


def test_answers_below_every_threshold_lead_straight_on(settings, clock, db):
    client, answer = baseline_response(settings, clock, **{"self-harm": "rarely"})
    assert follow(client, answer).endswith("/en/study")
    assert study_log.entries(db, "safety-rule") == []
    assert safety.open_flags(db) == []


def in_chat_arm(settings, db, participant_id: str) -> str:
    """Put an account in the study's chat arm, as intake would; return its pseudonym."""
    pseudonym = f"S{participant_id[:8]}"
    with transaction(db):
        db.execute(
            "INSERT INTO study_participants (participant_id, pseudonym, stratum, step)"
            " VALUES (?, ?, 'en-berlin', 'done')",
            [participant_id, pseudonym],
        )
        db.execute(
            "INSERT INTO allocations (pseudonym, stratum, position, arm, day)"
            " VALUES (?, 'en-berlin', 0, 'chat', ?)",
            [pseudonym, DAY.isoformat()],
        )
    return pseudonym


def test_the_therapist_sees_the_flag_on_the_next_sessions_page_until_seen(
    settings, clock, db, therapist
):
    therapist.create("Anna")
    set_site(db, "Anna", "berlin")
    assert therapist.publish("2027-01-18", "18:00").status_code == 302
    auth = AuthActions(client_for(settings, clock))
    auth.create()
    [(participant_id,)] = db.execute("SELECT id FROM participants").fetchall()
    pseudonym = in_chat_arm(settings, db, participant_id)
    with transaction(db):
        rule = STUDY.safety[0]
        safety.record(db, STUDY, participant_id, pseudonym, "baseline", [rule], DAY)
    [slot] = SLOT.findall(auth.client.get("/en/book").get_data(as_text=True))
    assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302
    [(appointment,)] = db.execute("SELECT id FROM appointments").fetchall()

    page = therapist.client.get(f"/en/chat/{appointment}").get_data(as_text=True)
    assert 'id="safety"' in page
    assert "self-harm-sometimes" in page and "1 March 2027" in page
    assert pseudonym not in page  # the therapist knows the participant by a name of their own
    [seen] = re.findall(r'action="([^"]+/seen)"', page)
    [flag] = re.findall(r'name="flag" value="(\d+)"', page)
    assert therapist.client.post(seen, data={"flag": "0", **form_fields(page)}).status_code == 404
    assert therapist.client.post(seen, data={**form_fields(page), "flag": flag}).status_code == 302

    page = therapist.client.get(f"/en/chat/{appointment}").get_data(as_text=True)
    assert 'id="safety"' not in page and "self-harm-sometimes" not in page
    today = datetime.datetime.fromtimestamp(clock(), datetime.UTC).date().isoformat()
    assert rows(settings, "SELECT seen_day FROM safety_flags") == [(today,)]
    assert safety.open_flags(db) == []


def test_the_lead_lists_participants_of_their_site_who_have_no_therapist(
    settings, clock, db, therapist
):
    _, answer = baseline_response(settings, clock, "en", **{"urge": "often"})
    _, other_site = baseline_response(settings, clock, "cs", **{"urge": "often"})
    assert answer.status_code == other_site.status_code == 200
    [berlin, prague] = [
        flag.pseudonym for flag in sorted(safety.open_flags(db), key=lambda flag: flag.site)
    ]
    therapist.create("Carl")
    set_site(db, "Carl", "berlin")
    assert therapist.client.get("/en/safety").status_code == 404  # not a lead
    assert "/en/safety" not in therapist.client.get("/en/").get_data(as_text=True)
    therapist.logout()
    therapist.create("Anna")
    set_site(db, "Anna", "berlin")
    set_lead(db, "Anna", True)
    assert 'href="/en/safety"' in therapist.client.get("/en/").get_data(as_text=True)
    page = therapist.client.get("/en/safety").get_data(as_text=True)
    assert berlin in page and "urge-often" in page
    assert prague not in page

    # Once the participant's course has a therapist, the flag is theirs to see.
    [(carl,)] = db.execute("SELECT id FROM therapists WHERE name = 'Carl'").fetchall()
    with transaction(db):
        db.execute(
            "INSERT INTO courses (participant_id, therapist_id) VALUES (?, ?)",
            [participant_of(db, berlin), carl],
        )
    page = therapist.client.get("/en/safety").get_data(as_text=True)
    assert berlin not in page and 'id="safety-list-empty"' in page


def test_a_flag_goes_with_withdraw_and_erase_with_the_account_and_on_the_erasure_day(
    settings, clock, db
):
    for _ in range(3):
        baseline_response(settings, clock, **{"self-harm": "sometimes"})
    erasing, deleting, staying = [flag.pseudonym for flag in safety.open_flags(db)]
    intake.withdraw(db, participant_of(db, erasing), intake.ERASE, DAY, int(clock()))
    delete_account(db, participant_of(db, deleting))
    assert [flag.pseudonym for flag in safety.open_flags(db)] == [staying]
    # The adverse events stay in the log, under the pseudonyms alone.
    assert len(study_log.entries(db, "safety-rule")) == 3

    (erase_day,) = db.execute("SELECT erase_day FROM study").fetchone()
    assert erase_study(db, erase_day) > 0
    assert rows(settings, "SELECT count(*) FROM safety_flags") == [(0,)]


def test_the_operator_makes_a_therapist_with_a_site_its_lead(tmp_path):
    env = therapist_env(tmp_path)
    assert run("therapist", "add", "--name", "Anna", "--languages", "en", env=env).returncode == 0
    refused = run("therapist", "lead", "Anna", env=env)
    assert refused.returncode != 0 and "no site" in refused.stderr
    assert run("therapist", "site", "Anna", "berlin", env=env).returncode == 0
    made = run("therapist", "lead", "Anna", env=env)
    assert made.returncode == 0, made.stderr
    assert run("therapist", "list", env=env).stdout.splitlines()[1].endswith("\tberlin (lead)")
    # A move to another site ends the lead: leading that one is the operator's call.
    assert run("therapist", "site", "Anna", "prague", env=env).returncode == 0
    assert run("therapist", "list", env=env).stdout.splitlines()[1].endswith("\tprague")
    assert run("therapist", "lead", "Anna", env=env).returncode == 0
    assert run("therapist", "lead", "Anna", "--clear", env=env).returncode == 0
    assert run("therapist", "list", env=env).stdout.splitlines()[1].endswith("\tprague")
