"""The researcher role: enrolled like therapists, it sees the study's CONSORT flow, its
safety list and the schedule's completion in the portal, and nothing else."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_study_consort import ELIGIBLE, EXAMPLE, NOT_ELIGIBLE, STUDY, Plan, follow

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.course import handover_choices
from stillroom.webapp.therapists import list_therapists, therapists_at

from support import (
    FAST_ARGON2,
    NO_INTAKE_LIMITS,
    Clock,
    LoopbackClient,
    TherapistActions,
    form_fields,
    stillroom_env,
)

START = datetime.date(2027, 3, 1)


def stillroom(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run a ``stillroom`` command as the operator does."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**stillroom_env(settings.data_dir, 0), "STILLROOM_STUDY": str(EXAMPLE)},
        check=False,
    )


def add_researcher(settings: Settings, name: str) -> tuple[str, str]:
    """Add a researcher with ``stillroom researcher add``; return (login name, token)."""
    result = stillroom(settings, "researcher", "add", "--name", name)
    assert result.returncode == 0, result.stderr
    login = re.search(r"Login name[^:]*: (\S+)", result.stdout)
    token = result.stdout.strip().rsplit("/", 1)[1]
    return login.group(1), token  # type: ignore[union-attr]


@pytest.fixture
def world(tmp_path):
    """A started example study with a few participants, and a portal whose clock is now."""
    settings = Settings.load(
        {},
        data_dir=tmp_path / "instance",
        disk_reserve_mib=1,
        study=str(EXAMPLE),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )
    prepare_instance(settings)
    db = connect(settings.database_path)
    try:
        keys = (new_recipient_keypair()[0], new_recipient_keypair()[0])
        amendment.start(db, settings.data_dir, STUDY, START, keys, 40)
        participant_app = create_participant_app(settings)
        flow = [Plan("en", ELIGIBLE, True, 1, ("baseline",)) for _ in range(6)]
        flow += [Plan("en", NOT_ELIGIBLE), Plan("en", ELIGIBLE, True, 0, ("baseline",))]
        for plan in flow:
            follow(db, participant_app, plan, START)
        pseudonym = study_log.entries(db, "allocation")[0].pseudonym
        with transaction(db):
            detail = {"rule": "self-harm-often", "timepoint": "baseline"}
            study_log.append(db, "safety-rule", START, pseudonym, detail)
    finally:
        db.close()
    clock = Clock()
    clock.now = time.time()  # the operator's enrolment link runs in real time
    portal_app = create_portal_app(settings, clock=clock)
    portal_app.test_client_class = LoopbackClient
    actions = TherapistActions(portal_app.test_client(), clock, settings.database_path)
    return settings, portal_app, actions, pseudonym


def enrol_researcher(settings, actions: TherapistActions, name: str = "Rosa") -> None:
    login_name, token = add_researcher(settings, name)
    actions.expect(name, login_name, token)
    response = actions.enrol(token)
    assert response.status_code == 302, response.get_data(as_text=True)


def test_a_researcher_enrols_logs_in_and_sees_the_flow_safety_and_completion(world):
    settings, _app, researcher, pseudonym = world
    enrol_researcher(settings, researcher)
    portal = researcher.client
    landed = portal.get("/en/?done=enrolled")
    assert landed.status_code == 302 and landed.location.startswith("/en/research")
    assert researcher.post("/en/logout", page="/en/research").status_code == 302
    response = researcher.login("Rosa")
    assert response.status_code == 302
    assert portal.get(response.location).location.startswith("/en/research")

    flow = portal.get("/en/research").get_data(as_text=True)
    assert 'id="consort-diagram"' in flow and 'src="/en/research/consort.svg"' in flow
    enrolment = flow[flow.index('id="consort-enrolment"') :]
    # 8 assessed, 7 randomised; the one not eligible is masked, as on the command line.
    assert re.search(r"Assessed for eligibility</th><td>8</td>", enrolment)
    assert re.search(r"Randomised</th><td>7</td>", enrolment)
    assert re.search(r"Not eligible</th><td>&lt;5</td>", enrolment)
    asked = portal.get("/en/research?exact=1").get_data(as_text=True)
    assert re.search(r"Not eligible</th><td>&lt;5</td>", asked)  # the portal has no exact counts

    image = portal.get("/en/research/consort.svg")
    assert image.status_code == 200 and image.mimetype == "image/svg+xml"
    svg = image.get_data(as_text=True)
    assert "Randomised (n=7)" in svg and "<script" not in svg
    assert "Not eligible (n=&lt;5)" in svg

    safety = portal.get("/en/research/safety").get_data(as_text=True)
    assert f"<td>{pseudonym}</td><td>self-harm-often</td><td>{START.isoformat()}</td>" in safety

    completion = portal.get("/en/research/completion").get_data(as_text=True)
    row = re.search(r'id="completion-baseline">(.*?)</tr>', completion).group(1)  # type: ignore[union-attr]
    # 7 completed and 0 missed: the rate is given; week-2 was due for nobody yet.
    assert re.findall(r"<td>([^<]*)</td>", row) == ["7", "0", "0", "7", "100%"]
    later = re.search(r'id="completion-week-2">(.*?)</tr>', completion).group(1)  # type: ignore[union-attr]
    assert re.findall(r"<td>([^<]*)</td>", later) == ["0", "0", "0", "0", "-"]


ALLOWED = {
    "portal.research_flow",
    "portal.research_diagram",
    "portal.research_safety",
    "portal.research_completion",
    "portal.passphrase",
    "portal.logout",
    "portal.login",
    "portal.privacy",
}


def test_a_researcher_is_refused_every_other_portal_page(world):
    settings, app, researcher, _pseudonym = world
    enrol_researcher(settings, researcher)
    portal = researcher.client
    token = form_fields(portal.get("/en/research").get_data(as_text=True))
    walked = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("portal.") or rule.endpoint in ALLOWED:
            continue
        url = re.sub(
            r"<(?:[^>:]*:)?([^>]+)>", lambda m: "en" if m.group(1) == "lang" else "x", rule.rule
        )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            data = token if method == "POST" else None
            response = portal.open(url, method=method, data=data)
            if rule.endpoint == "portal.home":
                assert response.status_code == 302, url
                assert response.location.startswith("/en/research")
            elif rule.websocket:
                assert response.status_code in (400, 403, 404), (url, response.status_code)
            else:
                assert response.status_code == 403, (method, url, response.status_code)
            walked.add(rule.endpoint)
    assert {"portal.availability", "portal.chat", "portal.notes", "portal.handover"} <= walked
    # Still logged in: the refusals ended nothing.
    assert portal.get("/en/research").status_code == 200


def test_a_therapist_is_refused_the_research_pages(world):
    _settings, _app, therapist, _pseudonym = world
    therapist.create("Anna", ("en",))
    for path in (
        "/en/research",
        "/en/research/consort.svg",
        "/en/research/safety",
        "/en/research/completion",
    ):
        assert therapist.client.get(path).status_code == 403, path
    assert therapist.client.get("/en/").status_code == 200


def test_visitors_are_sent_to_the_login_page(world):
    _settings, _app, actions, _pseudonym = world
    response = actions.client.get("/en/research/safety")
    assert response.status_code == 302 and response.location.startswith("/en/login")


def test_researchers_are_never_offered_to_participants_or_in_handovers(world):
    settings, _app, actions, _pseudonym = world
    actions.create("Anna", ("en",))
    enrol_researcher(settings, actions)
    db = connect(settings.database_path)
    try:
        with transaction(db):
            db.execute("UPDATE therapists SET site = 'berlin'")  # even at the same site
        [anna] = [t for t in list_therapists(db) if t.name == "Anna"]
        assert [t.name for t in list_therapists(db)] == ["Anna"]
        assert [t.name for t in therapists_at(db, "en", "berlin")] == ["Anna"]
        assert handover_choices(db, anna.id, "en", None) == {}
        assert handover_choices(db, anna.id, "en", STUDY) == {}
    finally:
        db.close()
    listed = stillroom(settings, "therapist", "list").stdout
    assert "Rosa" not in listed and "Anna" in listed


def test_researcher_list_and_disable(world):
    settings, _app, actions, _pseudonym = world
    enrol_researcher(settings, actions)
    assert "Rosa\t" in stillroom(settings, "researcher", "list").stdout
    assert "\tactive" in stillroom(settings, "researcher", "list").stdout
    # 'therapist disable' does not reach a researcher; 'researcher disable' does.
    assert stillroom(settings, "therapist", "disable", "Rosa").returncode == 1
    assert stillroom(settings, "researcher", "disable", "Rosa").returncode == 0
    assert "\tdisabled" in stillroom(settings, "researcher", "list").stdout
    response = actions.client.get("/en/research")
    assert response.status_code == 302 and "/login" in response.location
    assert actions.login("Rosa").status_code == 401


def test_a_researcher_who_lost_their_phone_is_reset_and_enrols_again(world):
    settings, _app, actions, _pseudonym = world
    enrol_researcher(settings, actions)
    # 'therapist reset' does not reach a researcher; 'researcher reset' does.
    assert stillroom(settings, "therapist", "reset", "Rosa").returncode == 1
    reset = stillroom(settings, "researcher", "reset", "Rosa")
    assert reset.returncode == 0, reset.stderr
    assert actions.login("Rosa").status_code == 401  # the old passphrase and TOTP are gone
    token = reset.stdout.strip().rsplit("/", 1)[1]
    actions.expect("Rosa", actions.login_names["Rosa"], token)
    assert actions.enrol(token).status_code == 302
    assert actions.client.get("/en/research").status_code == 200
    assert stillroom(settings, "researcher", "reset", "Nobody").returncode == 1
