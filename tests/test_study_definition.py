"""The study definition folder: what loads, what each mistake reports, and the questionnaires."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.crypto.box import UnsealError, open_sealed
from stillroom.crypto.keys import new_keypair
from stillroom.webapp.study.definition import (
    Problem,
    StudyDefinitionError,
    check_study,
    definition_sha256,
    load_study,
)
from stillroom.webapp.study.questionnaires import (
    AnswersError,
    pages,
    parse_instrument,
    score,
    seal_answers,
)

STILLROOM = str(Path(sys.executable).with_name("stillroom"))

STUDY_TOML = """\
[study]
id = "tiny-trial"
title = "A two-arm trial for the tests"
languages = ["en", "de"]
ends = 2028-06-30
retention_days_after_end = 365

[sites]
en = "berlin"
de = "berlin"

[[arms]]
id = "chat"
ratio = 1
gets = "chat"

[[arms]]
id = "waitlist"
ratio = 1
gets = "waitlist"
waitlist_weeks = 4

[allocation]
block_sizes = [2, 4, 6]
participants_per_stratum = 400

[course]
sessions_min = 4
sessions_max = 6
weeks = 4
boosters = 2
session_minutes = 60

[eligibility]
instrument = "screening"
ineligible_account = "keep"
[[eligibility.rules]]
item = "age"
equals = "yes"
[[eligibility.rules]]
item = "recent-use"
equals = "yes"

[consent]
current = "1.1"
[[consent.versions]]
version = "1.0"
folder = "consent/1.0"
kind = "major"
[[consent.versions]]
version = "1.1"
folder = "consent/1.1"
kind = "minor"

[[schedule]]
id = "baseline"
instrument = "wellbeing"
week = 0
opens_days = 0
closes_days = 7
[[schedule]]
id = "week-2"
instrument = "wellbeing"
week = 2
opens_days = -2
closes_days = 7

[[safety]]
id = "urge-often"
instrument = "wellbeing"
item = "urge"
at_least = 3
[[safety]]
id = "total-high"
instrument = "wellbeing"
score = "total"
at_least = 5
"""

INFORMATION = '''\
title = "About the study ({lang})"
body = """The first paragraph.

The second paragraph."""
'''

CONSENT = '''\
title = "Consent ({lang})"
body = """What taking part means ({version})."""
[items]
participate = "I agree to take part ({lang})."
questionnaires = "I agree that my answers are used for research ({lang})."
transcripts = "Optional: my chat transcripts may be used for research ({lang})."
'''

SCREENING = """\
id = "screening"
minutes = 2
[option_sets.yesno]
ids = ["yes", "no"]
values = [1, 0]

[[items]]
id = "age"
options = "yesno"
[[items]]
id = "recent-use"
options = "yesno"
"""

SCREENING_TEXT = """
[text.{lang}]
title = "Screening ({lang})"
intro = "Two questions ({lang})."
[text.{lang}.items]
age = "I am 18 or older ({lang})."
recent-use = "In the last two weeks ({lang})."
[text.{lang}.options.yesno]
yes = "Yes ({lang})"
no = "No ({lang})"
"""

WELLBEING = """\
id = "wellbeing"
minutes = 5
[option_sets.frequency]
ids = ["never", "rarely", "sometimes", "often"]
values = [0, 1, 2, 3]

[[items]]
id = "calm"
options = "frequency"
[[items]]
id = "urge"
options = "frequency"

[scores.total]
items = ["calm", "urge"]
"""

WELLBEING_TEXT = """
[text.{lang}]
title = "How the last two weeks went ({lang})"
intro = "Think of the last two weeks ({lang})."
[text.{lang}.items]
calm = "I felt calm ({lang})."
urge = "I felt in control ({lang})."
[text.{lang}.options.frequency]
never = "Never ({lang})"
rarely = "Rarely ({lang})"
sometimes = "Sometimes ({lang})"
often = "Often ({lang})"
"""


def study_files() -> dict[str, str]:
    """Return the files of a small sound study, by path inside its folder."""
    languages = ("en", "de")
    files = {"study.toml": STUDY_TOML}
    for lang in languages:
        files[f"information/{lang}.toml"] = INFORMATION.format(lang=lang)
        for version in ("1.0", "1.1"):
            files[f"consent/{version}/{lang}.toml"] = CONSENT.format(lang=lang, version=version)
    files["instruments/screening.toml"] = SCREENING + "".join(
        SCREENING_TEXT.format(lang=lang) for lang in languages
    )
    files["instruments/wellbeing.toml"] = WELLBEING + "".join(
        WELLBEING_TEXT.format(lang=lang) for lang in languages
    )
    return files


def write_study(folder: Path, files: dict[str, str | None]) -> Path:
    """Write a study folder; a file whose text is ``None`` is left out."""
    for name, text in files.items():
        if text is not None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study", study_files())


def test_a_sound_study_loads(folder):
    assert check_study(folder) == []
    study = load_study(folder)
    assert study.id == "tiny-trial"
    assert study.languages == ("en", "de")
    assert study.strata() == ["en-berlin", "de-berlin"]
    assert study.stratum_of("de") == "de-berlin"
    assert study.arm("waitlist").waitlist_weeks == 4
    assert study.arm("chat").waitlist_weeks is None
    assert study.block_sizes == (2, 4, 6)
    assert study.course.sessions_max == 6
    assert [rule.item for rule in study.eligibility_rules] == ["age", "recent-use"]
    assert [point.id for point in study.schedule] == ["baseline", "week-2"]
    assert [(rule.id, rule.item, rule.score, rule.at_least) for rule in study.safety] == [
        ("urge-often", "urge", None, 3),
        ("total-high", None, "total", 5),
    ]
    assert sorted(study.instruments) == ["screening", "wellbeing"]
    assert study.information["de"][0] == "About the study (de)"
    current = study.consent()
    assert (current.version, current.kind) == ("1.1", "minor")
    text = current.texts["de"]
    assert text.items["participate"] == "I agree to take part (de)."
    raw = (folder / "consent/1.1/de.toml").read_bytes()
    assert text.sha256 == hashlib.sha256(raw).hexdigest()
    assert study.sha256 == definition_sha256(folder)


# Each mistake: (file, text to replace, replacement, expected problems). An expected
# problem is (file, the text on its line in the broken file or None, key).
MISTAKES = {
    "missing key": (
        "study.toml",
        "session_minutes = 60\n",
        "",
        [("study.toml", None, "course.session_minutes")],
    ),
    "unknown key": (
        "study.toml",
        "boosters = 2\n",
        "boosters = 2\ncolour = 'blue'\n",
        [("study.toml", "colour = 'blue'", "course.colour")],
    ),
    "wrong type": (
        "study.toml",
        'ratio = 1\ngets = "chat"',
        'ratio = "one"\ngets = "chat"',
        [("study.toml", 'ratio = "one"', "arms[0].ratio")],
    ),
    "out of range": (
        "study.toml",
        "waitlist_weeks = 4",
        "waitlist_weeks = 60",
        [("study.toml", "waitlist_weeks = 60", "arms[1].waitlist_weeks")],
    ),
    "a day in quotes": (
        "study.toml",
        "ends = 2028-06-30",
        'ends = "2028-06-30"',
        [("study.toml", 'ends = "2028-06-30"', "study.ends")],
    ),
    "id against its pattern": (
        "study.toml",
        'id = "tiny-trial"',
        'id = "Tiny Trial"',
        [("study.toml", 'id = "Tiny Trial"', "study.id")],
    ),
    "a language Stillroom does not speak": (
        "study.toml",
        'languages = ["en", "de"]',
        'languages = ["en", "de", "fr"]',
        [("study.toml", 'languages = ["en", "de", "fr"]', "study.languages[2]")],
    ),
    "block size not a multiple of the ratios": (
        "study.toml",
        "block_sizes = [2, 4, 6]",
        "block_sizes = [2, 3, 6]",
        [("study.toml", "block_sizes = [2, 3, 6]", "allocation.block_sizes[1]")],
    ),
    "a waitlist arm without weeks": (
        "study.toml",
        "waitlist_weeks = 4\n",
        "",
        [("study.toml", None, "arms[1].waitlist_weeks")],
    ),
    "weeks on an arm that has no waitlist": (
        "study.toml",
        'gets = "chat"\n',
        'gets = "chat"\nwaitlist_weeks = 2\n',
        [("study.toml", "waitlist_weeks = 2", "arms[0].waitlist_weeks")],
    ),
    "duplicate arm": (
        "study.toml",
        'id = "waitlist"',
        'id = "chat"',
        [("study.toml", '|id = "chat"\nratio = 1\ngets = "waitlist"', "arms[1].id")],
    ),
    "one arm": (
        "study.toml",
        '[[arms]]\nid = "chat"\nratio = 1\ngets = "chat"\n\n',
        "",
        [("study.toml", "[[arms]]", "arms")],
    ),
    "fewer sessions than the least": (
        "study.toml",
        "sessions_min = 4",
        "sessions_min = 7",
        [("study.toml", "sessions_min = 7", "course.sessions_min")],
    ),
    "a language without a site": (
        "study.toml",
        'de = "berlin"\n',
        "",
        [("study.toml", None, "sites.de")],
    ),
    "a site for a language the study lacks": (
        "study.toml",
        'de = "berlin"\n',
        'de = "berlin"\nes = "madrid"\n',
        [("study.toml", 'es = "madrid"', "sites.es")],
    ),
    "unknown eligibility instrument": (
        "study.toml",
        'instrument = "screening"',
        'instrument = "screen"',
        [("study.toml", 'instrument = "screen"', "eligibility.instrument")],
    ),
    "a rule naming an unknown item": (
        "study.toml",
        'item = "recent-use"',
        'item = "recent"',
        [("study.toml", 'item = "recent"', "eligibility.rules[1].item")],
    ),
    "a rule naming an option the item lacks": (
        "study.toml",
        'item = "recent-use"\nequals = "yes"',
        'item = "recent-use"\nequals = "maybe"',
        [("study.toml", 'equals = "maybe"', "eligibility.rules[1].equals")],
    ),
    "two rules for one item": (
        "study.toml",
        'item = "recent-use"',
        'item = "age"',
        [("study.toml", '|item = "age"\nequals = "yes"\n\n[consent]', "eligibility.rules[1].item")],
    ),
    "a first consent version that is not major": (
        "study.toml",
        'kind = "major"',
        'kind = "minor"',
        [("study.toml", '1.0"\n|kind = "minor"', "consent.versions[0].kind")],
    ),
    "a minor change marked major": (
        "study.toml",
        'folder = "consent/1.1"\nkind = "minor"',
        'folder = "consent/1.1"\nkind = "major"',
        [("study.toml", '1.1"\n|kind = "major"', "consent.versions[1].kind")],
    ),
    "current consent not among the versions": (
        "study.toml",
        'current = "1.1"',
        'current = "1.2"',
        [("study.toml", 'current = "1.2"', "consent.current")],
    ),
    "a consent folder outside the layout": (
        "study.toml",
        'folder = "consent/1.1"',
        'folder = "../elsewhere"',
        [("study.toml", 'folder = "../elsewhere"', "consent.versions[1].folder")],
    ),
    "a window that closes before it opens": (
        "study.toml",
        "opens_days = -2\ncloses_days = 7",
        "opens_days = 3\ncloses_days = 1",
        [("study.toml", "closes_days = 1", "schedule[1].closes_days")],
    ),
    "a timepoint with an unknown instrument": (
        "study.toml",
        'instrument = "wellbeing"\nweek = 2',
        'instrument = "well-being"\nweek = 2',
        [("study.toml", 'instrument = "well-being"', "schedule[1].instrument")],
    ),
    "duplicate timepoint": (
        "study.toml",
        'id = "week-2"',
        'id = "baseline"',
        [("study.toml", '|id = "baseline"\ninstrument = "wellbeing"\nweek = 2', "schedule[1].id")],
    ),
    "no baseline first": (
        "study.toml",
        "week = 0",
        "week = 1",
        [("study.toml", "week = 1", "schedule[0].week")],
    ),
    "a safety rule on an unknown instrument": (
        "study.toml",
        'id = "urge-often"\ninstrument = "wellbeing"',
        'id = "urge-often"\ninstrument = "mood"',
        [("study.toml", 'instrument = "mood"', "safety[0].instrument")],
    ),
    "a safety rule on an instrument no timepoint uses": (
        "study.toml",
        'instrument = "wellbeing"\nitem = "urge"\nat_least = 3',
        'instrument = "screening"\nitem = "age"\nat_least = 1',
        [("study.toml", '|instrument = "screening"\nitem', "safety[0].instrument")],
    ),
    "a safety rule on an unknown item": (
        "study.toml",
        'item = "urge"\nat_least',
        'item = "surge"\nat_least',
        [("study.toml", 'item = "surge"', "safety[0].item")],
    ),
    "a safety rule on an unknown score": (
        "study.toml",
        'score = "total"',
        'score = "sum"',
        [("study.toml", 'score = "sum"', "safety[1].score")],
    ),
    "a safety rule on a score and an item": (
        "study.toml",
        'score = "total"',
        'score = "total"\nitem = "calm"',
        [("study.toml", 'item = "calm"', "safety[1].item")],
    ),
    "a safety rule on neither a score nor an item": (
        "study.toml",
        'score = "total"\n',
        "",
        [("study.toml", '|[[safety]]\nid = "total-high"', "safety[1]")],
    ),
    "a safety rule that can never fire": (
        "study.toml",
        "at_least = 3",
        "at_least = 4",
        [("study.toml", "at_least = 4", "safety[0].at_least")],
    ),
    "two safety rules with one id": (
        "study.toml",
        'id = "total-high"',
        'id = "urge-often"',
        [("study.toml", '|id = "urge-often"\ninstrument = "wellbeing"\nscore', "safety[1].id")],
    ),
    "a timepoint with neither a week nor a session": (
        "study.toml",
        'instrument = "wellbeing"\nweek = 2\n',
        'instrument = "wellbeing"\n',
        [("study.toml", None, "schedule[1].week")],
    ),
    "a timepoint after a session the course never has": (
        "study.toml",
        "week = 2",
        "after_session = 7",
        [("study.toml", "after_session = 7", "schedule[1].after_session")],
    ),
    "a baseline tied to a session": (
        "study.toml",
        "week = 0",
        "after_session = 1",
        [("study.toml", "after_session = 1", "schedule[0].after_session")],
    ),
    "pages longer than ten items": (
        "instruments/wellbeing.toml",
        "minutes = ",
        "per_page = 11\nminutes = ",
        [("instruments/wellbeing.toml", "per_page = 11", "per_page")],
    ),
    "not TOML": (
        "study.toml",
        "\nweeks = 4",
        "\nweeks = = 4",
        [("study.toml", "weeks = = 4", "")],
    ),
    "a link in participant text": (
        "information/en.toml",
        "The second paragraph.",
        "More at https://example.org/study.",
        [("information/en.toml", 'body = """', "body")],
    ),
    "HTML in an item": (
        "instruments/wellbeing.toml",
        'calm = "I felt calm (en)."',
        'calm = "I felt <b>calm</b> (en)."',
        [("instruments/wellbeing.toml", 'calm = "I felt <b>', "text.en.items.calm")],
    ),
    "a language without its information": (
        "information/de.toml",
        None,
        None,
        [("study.toml", 'languages = ["en", "de"]', "study.languages")],
    ),
    "information in a language the study lacks": (
        "information/es.toml",
        None,
        INFORMATION.format(lang="es"),
        [("information/es.toml", None, "")],
    ),
    "information without a body": (
        "information/de.toml",
        'body = """The first paragraph.\n\nThe second paragraph."""\n',
        "",
        [("information/de.toml", None, "body")],
    ),
    "a consent version without one language": (
        "consent/1.0/de.toml",
        None,
        None,
        [("study.toml", 'folder = "consent/1.0"', "consent.versions[0].folder")],
    ),
    "consent versions whose items differ": (
        "consent/1.1/de.toml",
        'transcripts = "Optional: my chat transcripts may be used for research (de)."\n',
        "",
        [("consent/1.1/de.toml", None, "items.transcripts")],
    ),
    "a consent item of its own": (
        "consent/1.1/en.toml",
        "[items]\n",
        '[items]\nemail = "I give my e-mail address."\n',
        [("consent/1.1/en.toml", "email =", "items.email")],
    ),
    "a consent folder not declared": (
        "consent/2.0/en.toml",
        None,
        CONSENT.format(lang="en", version="2.0"),
        [("consent/2.0", None, "")],
    ),
    "an instrument named unlike its file": (
        "instruments/wellbeing.toml",
        'id = "wellbeing"',
        'id = "well-being"',
        [("instruments/wellbeing.toml", 'id = "well-being"', "id")],
    ),
    "an item with an unknown option set": (
        "instruments/wellbeing.toml",
        'id = "urge"\noptions = "frequency"',
        'id = "urge"\noptions = "freq"',
        [("instruments/wellbeing.toml", 'options = "freq"', "items[1].options")],
    ),
    "fewer values than options": (
        "instruments/wellbeing.toml",
        "values = [0, 1, 2, 3]",
        "values = [0, 1, 2]",
        [("instruments/wellbeing.toml", "values = [0, 1, 2]", "option_sets.frequency.values")],
    ),
    "a score over an unknown item": (
        "instruments/wellbeing.toml",
        'items = ["calm", "urge"]',
        'items = ["calm", "surge"]',
        [("instruments/wellbeing.toml", 'items = ["calm", "surge"]', "scores.total.items[1]")],
    ),
    "a duplicate item": (
        "instruments/wellbeing.toml",
        '[[items]]\nid = "urge"',
        '[[items]]\nid = "calm"\noptions = "frequency"\n[[items]]\nid = "urge"',
        [
            (
                "instruments/wellbeing.toml",
                '|id = "calm"\noptions = "frequency"\n[[items]]\nid = "urge"',
                "items[1].id",
            )
        ],
    ),
    "an item without its text in one language": (
        "instruments/wellbeing.toml",
        'urge = "I felt in control (de)."\n',
        "",
        [("instruments/wellbeing.toml", None, "text.de.items.urge")],
    ),
    "an option without its text in one language": (
        "instruments/wellbeing.toml",
        'often = "Often (de)"\n',
        "",
        [("instruments/wellbeing.toml", None, "text.de.options.frequency.often")],
    ),
    "an instrument without its intro in one language": (
        "instruments/screening.toml",
        'intro = "Two questions (en)."\n',
        "",
        [("instruments/screening.toml", None, "text.en.intro")],
    ),
    "text for an item the instrument lacks": (
        "instruments/wellbeing.toml",
        'calm = "I felt calm (en)."\n',
        'calm = "I felt calm (en)."\nangry = "I felt angry (en)."\n',
        [("instruments/wellbeing.toml", "angry =", "text.en.items.angry")],
    ),
    "an instrument in another language than the study's": (
        "instruments/screening.toml",
        "[text.de",
        "[text.es",
        [
            ("instruments/screening.toml", "[text.es]", "text.es"),
            ("instruments/screening.toml", None, "text.de"),
        ],
    ),
}


def line_of(text: str, fragment: str) -> int:
    """Return the line on which ``fragment`` starts in ``text``, or where its ``|`` is."""
    before, _, after = fragment.rpartition("|")
    assert text.count(before + after) == 1, fragment
    return text[: text.index(before + after) + len(before)].count("\n") + 1


@pytest.mark.parametrize(("name"), list(MISTAKES))
def test_each_mistake_names_its_file_line_and_key(tmp_path, name):
    file, old, new, expected = MISTAKES[name]
    files: dict[str, str | None] = dict(study_files())
    if old is None:
        files[file] = new
    else:
        assert old in files[file], old
        files[file] = files[file].replace(old, new)
    folder = write_study(tmp_path / "study", files)
    wanted = [
        (where, None if fragment is None else line_of(files[where], fragment), key)
        for where, fragment, key in expected
    ]
    problems = check_study(folder)
    assert [(p.file, p.line, p.key) for p in problems] == wanted, [str(p) for p in problems]
    with pytest.raises(StudyDefinitionError) as refused:
        load_study(folder)
    assert refused.value.problems == problems


def test_a_study_without_safety_rules_loads(tmp_path):
    files = study_files()
    files["study.toml"] = files["study.toml"].split("[[safety]]")[0]
    assert load_study(write_study(tmp_path / "study", files)).safety == ()


def test_a_timepoint_may_follow_a_session_and_a_form_may_have_shorter_pages(tmp_path):
    files = dict(study_files())
    files["study.toml"] += (
        '[[schedule]]\nid = "after-2"\ninstrument = "wellbeing"\nafter_session = 2\n'
        "opens_days = 0\ncloses_days = 7\n"
    )
    files["instruments/wellbeing.toml"] = files["instruments/wellbeing.toml"].replace(
        "minutes = 5", "minutes = 5\nper_page = 1"
    )
    study = load_study(write_study(tmp_path / "study", files))
    tied = study.schedule[-1]
    assert (tied.id, tied.after_session, tied.week) == ("after-2", 2, 0)
    assert study.schedule[1].after_session is None
    wellbeing = study.instruments["wellbeing"]
    assert [len(page) for page in pages(wellbeing)] == [1, 1]
    assert [len(page) for page in pages(study.instruments["screening"])] == [2]


def test_a_problem_reads_file_line_key_and_message():
    assert str(Problem("study.toml", 12, "arms[1].ratio", "must be a whole number")) == (
        "study.toml:12: arms[1].ratio: must be a whole number"
    )
    assert str(Problem("study.toml", None, "sites.de", "missing: add it to [sites]")) == (
        "study.toml: sites.de: missing: add it to [sites]"
    )


def test_the_definition_hash_changes_with_any_file(folder):
    before = definition_sha256(folder)
    assert definition_sha256(folder) == before
    path = folder / "consent/1.0/en.toml"
    path.write_text(path.read_text().replace("take part", "take  part"))
    assert definition_sha256(folder) != before


def test_the_definition_hash_frames_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x").write_text("yz")
    (tmp_path / "b").mkdir()
    (tmp_path / "b/xy").write_text("z")
    assert definition_sha256(tmp_path / "a") != definition_sha256(tmp_path / "b")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": str(cwd / "data")},
    )


def test_study_check_summarises_a_sound_study(folder, tmp_path):
    result = run("study", "check", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    for word in ("tiny-trial", "chat", "waitlist", "en-berlin", "de-berlin", "screening"):
        assert word in lines[0]
    assert not (tmp_path / "data").exists()  # it needs no data directory, and makes none


def test_study_check_lists_every_problem_and_fails(folder, tmp_path):
    text = (folder / "study.toml").read_text()
    text = text.replace('ratio = 1\ngets = "chat"', 'ratio = "one"\ngets = "chat"')
    text = text.replace("session_minutes = 60\n", "")
    (folder / "study.toml").write_text(text)
    (folder / "information/de.toml").unlink()
    result = run("study", "check", str(folder), cwd=tmp_path)
    assert result.returncode == 1
    ratio = line_of(text, 'ratio = "one"')
    languages = line_of(text, "languages =")
    assert result.stdout.splitlines() == [
        f"study.toml:{languages}: study.languages: de has no information/de.toml",
        f"study.toml:{ratio}: arms[0].ratio: must be a whole number",
        "study.toml: course.session_minutes: missing: add it to [course]",
    ]
    assert not (tmp_path / "data").exists()


def instrument_of(items: int) -> dict:
    """Return an instrument's data with ``items`` items, all scored in ``total``."""
    ids = [f"q{number}" for number in range(items)]
    words = {"never": "Never", "often": "Often"}
    return {
        "id": "long",
        "minutes": 9,
        "option_sets": {"freq": {"ids": ["never", "often"], "values": [0, 3]}},
        "items": [{"id": item, "options": "freq"} for item in ids],
        "scores": {"total": {"items": ids}, "first": {"items": ids[:2]}},
        "text": {
            "en": {
                "title": "T",
                "intro": "I",
                "items": {item: item for item in ids},
                "options": {"freq": words},
            }
        },
    }


def test_scores_sum_the_chosen_options_values(folder):
    wellbeing = load_study(folder).instruments["wellbeing"]
    assert score(wellbeing, {"calm": "often", "urge": "rarely"}) == {"total": 4}
    long = parse_instrument(instrument_of(12))
    answers = {f"q{number}": "often" for number in range(12)}
    answers["q1"] = "never"
    assert score(long, answers) == {"total": 33, "first": 3}


@pytest.mark.parametrize(
    "answers",
    [
        {"calm": "often"},  # urge unanswered: a partial sum would read as a lower score
        {"calm": "often", "urge": "always"},
        {"calm": "often", "urge": "often", "name": "never"},
    ],
)
def test_scoring_refuses_incomplete_or_unknown_answers(folder, answers):
    wellbeing = load_study(folder).instruments["wellbeing"]
    with pytest.raises(AnswersError):
        score(wellbeing, answers)


def test_pages_hold_at_most_ten_items_in_order():
    long = parse_instrument(instrument_of(23))
    split = pages(long)
    assert [len(page) for page in split] == [8, 8, 7]
    assert [item.id for page in split for item in page] == [f"q{n}" for n in range(23)]
    assert [len(page) for page in pages(parse_instrument(instrument_of(10)))] == [10]
    assert [len(page) for page in pages(long, per_page=5)] == [5, 5, 5, 4, 4]
    with pytest.raises(ValueError):
        pages(long, per_page=11)


def test_sealed_answers_open_only_with_the_study_secret_key(folder):
    public, secret = new_keypair()
    _, other_secret = new_keypair()
    answers = {"urge": "often", "calm": "never"}
    sealed = seal_answers(answers, public)
    assert b"often" not in sealed
    assert json.loads(open_sealed(sealed, secret)) == answers
    with pytest.raises(UnsealError):
        open_sealed(sealed, other_secret)


def test_sealed_answers_are_as_long_whatever_was_chosen():
    public, _ = new_keypair()
    short = seal_answers({"calm": "never", "urge": "never"}, public)
    long = seal_answers({"calm": "sometimes", "urge": "sometimes"}, public)
    assert len(short) == len(long)
