"""The CONSORT flow, counted from the study log: a known flow of participants through the
real intake, its table, its JSON, its masking of small counts and its SVG diagram."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stillroom.crypto.passphrase import generate_passphrase
from stillroom.crypto.stream import new_recipient_keypair
from stillroom.webapp.accounts import create_account
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect, transaction
from stillroom.webapp.study import amendment, consort, intake
from stillroom.webapp.study import log as study_log
from stillroom.webapp.study.definition import load_study

from enrolment import run_study
from support import FAST_ARGON2, NO_INTAKE_LIMITS, stillroom_env

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "study"
STUDY = load_study(EXAMPLE)
START = datetime.date(2027, 3, 1)
ELIGIBLE = {"age": "yes", "recent-use": "yes", "wants-chat": "yes"}
NOT_ELIGIBLE = {**ELIGIBLE, "age": "no"}
BASELINE = {item.id: "rarely" for item in STUDY.instruments["wellbeing"].items}  # fires no rule
LATER = ("week-2", "week-4", "week-6", "week-8")
EVERY = tuple(point.id for point in STUDY.schedule)  # after-session-2 is never reached here


@dataclass
class Plan:
    """One participant's way through the study, and the boxes it must end in."""

    language: str
    #: None: consented and left before screening; else the screening's answers.
    screening: dict[str, str] | None
    randomised: bool = False
    sessions: int = 0
    completed: tuple[str, ...] = ()
    missed: dict[str, str] = field(default_factory=dict)
    withdraw: tuple[str, ...] = ()
    #: What the flow must say of them.
    reason: str | None = None
    level: str | None = None
    lost: bool = False
    arm: str | None = None


def plans() -> list[Plan]:
    """The known flow: 42 people in three strata, each kind of box reached at least once."""
    missed_all = {timepoint: "missed" for timepoint in LATER}
    stopped = {timepoint: "withdrawn" for timepoint in LATER}
    en = [
        *(Plan("en", None) for _ in range(2)),
        *(Plan("en", NOT_ELIGIBLE, reason=consort.NOT_ELIGIBLE) for _ in range(5)),
        Plan("en", NOT_ELIGIBLE, withdraw=("erase",), reason=consort.NOT_ELIGIBLE),
        *(Plan("en", ELIGIBLE, reason=consort.LEFT) for _ in range(3)),
        *(
            Plan("en", ELIGIBLE, withdraw=("stop-questionnaires",), reason=consort.WITHDREW)
            for _ in range(2)
        ),
        *(Plan("en", ELIGIBLE, True, 6, EVERY) for _ in range(6)),
        *(
            Plan(
                "en",
                ELIGIBLE,
                True,
                4,
                ("baseline", "week-2"),
                {"week-4": "missed", "week-6": "missed", "week-8": "missed"},
                lost=True,
            )
            for _ in range(4)
        ),
        *(Plan("en", ELIGIBLE, True, 2, ("baseline",), missed_all, lost=True) for _ in range(3)),
        *(
            Plan(
                "en",
                ELIGIBLE,
                True,
                0,
                ("baseline",),
                withdraw=("stop-sessions",),
                level="stop-sessions",
            )
            for _ in range(2)
        ),
        *(
            Plan(
                "en",
                ELIGIBLE,
                True,
                1,
                ("baseline",),
                stopped,
                ("stop-questionnaires",),
                level="stop-questionnaires",
            )
            for _ in range(2)
        ),
        Plan(
            "en",
            ELIGIBLE,
            True,
            3,
            ("baseline", "week-2"),
            {"week-4": "withdrawn"},
            ("stop-sessions", "stop-questionnaires"),
            level="stop-questionnaires",
        ),
        *(
            Plan("en", ELIGIBLE, True, 1, ("baseline",), withdraw=("erase",), level="erase")
            for _ in range(2)
        ),
    ]
    de = [
        Plan("de", NOT_ELIGIBLE, reason=consort.NOT_ELIGIBLE),
        Plan("de", ELIGIBLE, reason=consort.LEFT),
        *(Plan("de", ELIGIBLE, True, 5, EVERY) for _ in range(3)),
        *(Plan("de", ELIGIBLE, True, 0, ("baseline",)) for _ in range(3)),
    ]
    cs = [Plan("cs", ELIGIBLE, True, 4, EVERY)]
    return en + de + cs


def append(db, event: str, day: datetime.date, pseudonym: str, detail: dict[str, Any]) -> None:
    """Log what colleagues' code logs (assessments, sessions), exactly as agreed for part 2."""
    with transaction(db):
        study_log.append(db, event, day, pseudonym, detail)


def follow(db, app, plan: Plan, day: datetime.date) -> None:
    """Take one participant through the real intake, then the course and the schedule."""
    account = create_account(
        db,
        app.config["KEY_DERIVER"],
        app.config["LOOKUP_KEY"],
        generate_passphrase("en"),
        day.isoformat(),
    )
    pid = account.participant_id
    found = intake.enrol(db, pid, STUDY.stratum_of(plan.language))
    intake.read_information(db, pid)
    version = STUDY.consent()
    shown = (version.version, version.texts[plan.language].sha256)
    intake.give_consent(
        db, STUDY, pid, plan.language, {"participate", "questionnaires"}, day, shown
    )
    if plan.screening is not None:
        intake.submit_screening(db, STUDY, pid, plan.screening, day)
    if plan.randomised:
        plan.arm, _ = intake.submit_baseline(db, STUDY, pid, BASELINE, day)
    for number in range(plan.sessions):
        append(db, "session-attended", day, found.pseudonym, {"minutes": 50, "session": number + 1})
    for timepoint in plan.completed:
        if timepoint == STUDY.schedule[0].id:
            continue  # the baseline's submission logged it
        detail = {"timepoint": timepoint, "instrument": "wellbeing"}
        append(db, "assessment-completed", day, found.pseudonym, detail)
    for level in plan.withdraw:
        intake.withdraw(db, pid, level, day, 0)
    for timepoint, reason in plan.missed.items():
        append(
            db,
            "assessment-missed",
            day,
            found.pseudonym,
            {"timepoint": timepoint, "reason": reason},
        )


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> tuple[Settings, list[Plan]]:
    """A started example study that the known flow went through."""
    tmp_path = tmp_path_factory.mktemp("consort")
    settings = Settings.load(
        {},
        data_dir=tmp_path / "instance",
        disk_reserve_mib=1,
        study=str(EXAMPLE),
        **FAST_ARGON2,
        **NO_INTAKE_LIMITS,
    )
    prepare_instance(settings)
    app = create_participant_app(settings)
    db = connect(settings.database_path)
    known = plans()
    try:
        keys = (new_recipient_keypair()[0], new_recipient_keypair()[0])
        amendment.start(db, settings.data_dir, STUDY, START, keys, 40)
        for number, plan in enumerate(known):
            follow(db, app, plan, START + datetime.timedelta(days=number % 20))
    finally:
        db.close()
    return settings, known


def expected(known: list[Plan]) -> dict[str, Any]:
    """Count the boxes from the plans alone: what the flow must say, exactly."""
    screened = [plan for plan in known if plan.screening is not None]
    randomised = [plan for plan in screened if plan.randomised]
    arms = {}
    for arm in STUDY.arms:
        mine = [plan for plan in randomised if plan.arm == arm.id]
        arms[arm.id] = {
            "allocated": len(mine),
            "received": sum(plan.sessions >= 1 for plan in mine),
            "completed_course": sum(plan.sessions >= STUDY.course.sessions_min for plan in mine),
            "timepoints_completed": {
                timepoint: sum(timepoint in plan.completed for plan in mine) for timepoint in EVERY
            },
            "withdrawn": {
                level: sum(plan.level == level for plan in mine) for level in consort.LEVELS
            },
            "lost_to_follow_up": sum(plan.lost for plan in mine),
            "analysed": sum(plan.level != "erase" for plan in mine),
        }
    reasons = {
        reason: sum(plan.reason == reason for plan in screened) for reason in consort.EXCLUSIONS
    }
    return {
        "assessed": len(screened),
        "excluded": sum(reasons.values()),
        "excluded_reasons": reasons,
        "randomised": len(randomised),
        "arms": arms,
    }


def run_consort(settings: Settings, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``stillroom study consort`` as the study team does."""
    env = {**stillroom_env(settings.data_dir, 0), "STILLROOM_STUDY": str(EXAMPLE)}
    result = run_study(env, "consort", *options)
    assert result.returncode == 0, result.stderr
    return result


def masked(value: Any) -> Any:
    """Mask exact counts as the study team's default output must."""
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    return "<5" if 1 <= value <= 4 else value


def test_every_box_of_the_known_flow_is_counted_exactly_from_the_log(flow):
    settings, known = flow
    found = json.loads(run_consort(settings, "--json", "--exact").stdout)
    assert found["exact"] is True
    assert found["total"] == expected(known)
    for language in ("en", "de", "cs"):
        stratum = STUDY.stratum_of(language)
        assert found["strata"][stratum] == expected([p for p in known if p.language == language])
    # Strata nobody entered are there, all zero.
    assert found["strata"]["pt-madrid"]["assessed"] == 0
    total = found["total"]
    assert (total["assessed"], total["excluded"], total["randomised"]) == (40, 13, 27)
    assert total["excluded_reasons"] == {
        consort.NOT_ELIGIBLE: 7,
        consort.WITHDREW: 2,
        consort.LEFT: 4,
    }
    # The two who erased are still allocated and withdrawn (erase), and not analysed.
    arms = total["arms"].values()
    assert sum(arm["withdrawn"]["erase"] for arm in arms) == 2
    assert sum(arm["analysed"] for arm in arms) == 25
    assert sum(arm["lost_to_follow_up"] for arm in arms) == 7


def test_counts_from_1_to_4_are_masked_unless_exact(flow):
    settings, _known = flow
    exact = json.loads(run_consort(settings, "--json", "--exact").stdout)
    found = json.loads(run_consort(settings, "--json").stdout)
    assert found["exact"] is False
    assert found["total"] == masked(exact["total"])
    assert found["strata"] == masked(exact["strata"])
    assert found["strata"]["cs-prague"]["randomised"] == "<5"
    assert found["strata"]["pt-madrid"]["randomised"] == 0
    assert found["total"]["randomised"] == 27


def test_the_table_shows_every_box_per_stratum(flow):
    settings, _known = flow
    lines = run_consort(settings).stdout.splitlines()
    assert lines[0].split() == ["all", *STUDY.strata()]

    def row(label: str) -> list[str]:
        line = next(line for line in lines if line.strip().startswith(label))
        return line[len(line) - len(line.lstrip()) + len(label) :].split()

    assert row("Assessed for eligibility") == ["40", "31", "8", "<5", "0", "0"]
    assert row("Randomised") == ["27", "20", "6", "<5", "0", "0"]
    assert row("Not eligible") == ["7", "6", "<5", "0", "0", "0"]
    for arm in STUDY.arms:
        assert any(line == f"Arm {arm.id}" for line in lines)
    assert sum(line.strip().startswith("Lost to follow-up") for line in lines) == len(STUDY.arms)


def test_the_svg_diagram_is_standalone_and_shows_the_numbers(flow, tmp_path):
    settings, _known = flow
    path = tmp_path / "consort.svg"
    run_consort(settings, "--svg", str(path), "--exact")
    text = path.read_text(encoding="utf-8")
    root = ET.fromstring(text)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    elements = [element.tag.rsplit("}", 1)[-1] for element in root.iter()]
    assert not {"script", "style", "image", "foreignObject", "a", "use"} & set(elements)
    for element in root.iter():
        for name, value in element.attrib.items():
            assert not name.endswith("href") and not name.startswith("on"), name
            assert "url(" not in value or re.fullmatch(r"url\(#[a-z]+\)", value), value
    assert root.get("font-family") == "sans-serif"
    assert "@font-face" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    shown = [
        " ".join(element.itertext()) for element in root.iter("{http://www.w3.org/2000/svg}text")
    ]
    assert "Assessed for eligibility (n=40)" in shown
    assert "Randomised (n=27)" in shown
    assert "- Not eligible (n=7)" in shown
    for arm in STUDY.arms:
        assert any(line.startswith(f"Allocated to {arm.id} (n=") for line in shown)
    assert {"Enrolment", "Allocation", "Follow-up", "Analysis"} <= set(shown)


def test_the_masked_svg_hides_small_counts(flow, tmp_path):
    settings, _known = flow
    path = tmp_path / "consort.svg"
    run_consort(settings, "--svg", str(path))
    text = path.read_text(encoding="utf-8")
    assert "(n=&lt;5)" in text
    assert not re.search(r"\(n=[1-4]\)", text)


@pytest.mark.parametrize(
    ("number", "exact", "shown"),
    [(0, False, 0), (1, False, "<5"), (4, False, "<5"), (5, False, 5), (3, True, 3)],
)
def test_shown_masks_only_counts_of_one_to_four(number, exact, shown):
    assert consort.shown(number, exact) == shown
