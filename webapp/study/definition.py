"""The study definition: one folder, checked against one schema, read into a ``Study``.

The folder holds ``study.toml``, ``information/<lang>.toml``,
``consent/<version>/<lang>.toml`` and ``instruments/<id>.toml``. :func:`check_study`
names every problem with its file, line and key, so a study team can fix the folder
without reading code; :func:`load_study` reads a folder that has none.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.study.questionnaires import MAX_PER_PAGE, Instrument, parse_instrument

#: The consent items every version declares, and whether each must be ticked to take part.
CONSENT_ITEMS = {"participate": True, "questionnaires": True, "transcripts": False}
#: What an arm gets.
ARM_KINDS = ("chat", "waitlist", "none")
#: What happens to the account of someone who is not eligible.
INELIGIBLE_ACCOUNT = ("keep", "delete")
CONSENT_KINDS = ("major", "minor")


# --- What a problem is -----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a study folder, where it is and what to do."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        place = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{place}: {self.key}: {self.message}" if self.key else f"{place}: {self.message}"


class StudyDefinitionError(Exception):
    """The study folder has problems; ``problems`` lists each of them."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


# --- The study as the rest of Stillroom sees it ----------------------------------------


@dataclass(frozen=True)
class Arm:
    """A group participants are allocated to, its share and what it gets."""

    id: str
    ratio: int
    gets: str
    waitlist_weeks: int | None


@dataclass(frozen=True)
class Course:
    """The course of chat sessions an arm with chat gets."""

    sessions_min: int
    sessions_max: int
    weeks: int
    boosters: int
    session_minutes: int


@dataclass(frozen=True)
class Rule:
    """An eligibility rule: the answer to ``item`` must be the option ``equals``."""

    item: str
    equals: str


@dataclass(frozen=True)
class ConsentText:
    """One consent version in one language; ``sha256`` is over the file's exact bytes."""

    title: str
    body: str
    items: dict[str, str]
    sha256: str


@dataclass(frozen=True)
class ConsentVersion:
    """A consent version: ``major`` asks everyone again, ``minor`` only tells them."""

    version: str
    kind: str
    folder: str
    texts: dict[str, ConsentText]


@dataclass(frozen=True)
class Timepoint:
    """An assessment due ``week`` weeks after randomisation, open for a window of days.

    With ``after_session`` it is due ``week`` weeks (often 0) after the day of the
    participant's session of that number instead, and not at all before it.
    """

    id: str
    instrument: str
    week: int
    opens_days: int
    closes_days: int
    after_session: int | None = None


@dataclass(frozen=True)
class SafetyRule:
    """A safety rule: it fires when a score of an instrument, or one item's option value,
    is at least ``at_least`` (exactly one of ``score`` and ``item`` is set)."""

    id: str
    instrument: str
    score: str | None
    item: str | None
    at_least: int


@dataclass(frozen=True)
class Study:
    """A checked study definition."""

    id: str
    title: str
    languages: tuple[str, ...]
    ends: date
    retention_days_after_end: int
    sites: dict[str, str]
    arms: tuple[Arm, ...]
    block_sizes: tuple[int, ...]
    participants_per_stratum: int
    course: Course
    eligibility_instrument: str
    eligibility_rules: tuple[Rule, ...]
    ineligible_account: str
    consent_current: str
    consent_versions: tuple[ConsentVersion, ...]
    schedule: tuple[Timepoint, ...]
    instruments: dict[str, Instrument]
    information: dict[str, tuple[str, str]]
    folder: Path
    sha256: str
    safety: tuple[SafetyRule, ...] = ()

    def strata(self) -> list[str]:
        """Return the strata, one per language: ``<language>-<site>``."""
        return [self.stratum_of(language) for language in self.languages]

    def stratum_of(self, language: str) -> str:
        """Return the stratum of a participant who uses ``language``."""
        return f"{language}-{self.sites[language]}"

    def arm(self, arm_id: str) -> Arm:
        """Return the arm called ``arm_id``.

        :raises KeyError: when the study has no such arm.
        """
        for arm in self.arms:
            if arm.id == arm_id:
                return arm
        raise KeyError(arm_id)

    def consent(self, version: str | None = None) -> ConsentVersion:
        """Return a consent version, the current one by default."""
        wanted = version or self.consent_current
        return next(item for item in self.consent_versions if item.version == wanted)

    def summary(self) -> str:
        """Describe the study in one line, for ``stillroom study check``."""
        arms = ", ".join(f"{arm.id} ({arm.ratio}, {arm.gets})" for arm in self.arms)
        return (
            f"{self.id}: {len(self.arms)} arms: {arms}; "
            f"{len(self.languages)} strata: {', '.join(self.strata())}; "
            f"{len(self.instruments)} instruments: {', '.join(sorted(self.instruments))}; "
            f"{len(self.schedule)} timepoints; {len(self.safety)} safety rules;"
            f" consent {self.consent_current}"
        )


# --- The schema --------------------------------------------------------------------------
#
# One schema for every file of the folder, as nested nodes. Each node checks a value
# and reports what is wrong with it; the checks across keys and files follow below.


class Node:
    """A part of the schema: what one value must be."""

    def check(self, value: Any, key: str, report: Report) -> bool:
        """Report what is wrong with ``value`` at ``key``; return whether it is sound."""
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Node):
    """A string, non-empty, optionally matching a pattern or one of some choices."""

    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    hint: str = ""
    #: Text shown to participants: no HTML and no links (the onion app links nowhere).
    plain: bool = False

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, str) or not value.strip():
            report.at(key, "must be a non-empty string")
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            report.at(key, f"{value!r} is not {self.hint or 'valid'}")
            return False
        if self.choices is not None and value not in self.choices:
            report.at(key, f"{value!r} is not one of {', '.join(self.choices)}")
            return False
        if self.plain and MARKUP.search(value):
            report.at(key, "must be plain text, with no HTML and no links")
            return False
        return True


@dataclass(frozen=True)
class Whole(Node):
    """A whole number between ``low`` and ``high``."""

    low: int
    high: int

    def check(self, value: Any, key: str, report: Report) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            report.at(key, "must be a whole number")
            return False
        if not self.low <= value <= self.high:
            report.at(key, f"must be between {self.low} and {self.high}")
            return False
        return True


class Day(Node):
    """A TOML date, such as ``2028-06-30`` (a day, with no time)."""

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, date) or isinstance(value, datetime):
            report.at(key, "must be a TOML date such as 2028-06-30, without quotes")
            return False
        return True


@dataclass(frozen=True)
class List(Node):
    """A list of values of one kind (distinct unless told), at least ``least`` of them."""

    element: Node
    least: int = 1
    most: int = 1000
    distinct: bool = True

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, list):
            report.at(key, "must be a list")
            return False
        if not self.least <= len(value) <= self.most:
            report.at(key, count_message(len(value), self.least, self.most, "entries"))
            return False
        # A list, not a generator: every entry is checked, so every problem is named.
        sound = all(
            [self.element.check(entry, f"{key}[{i}]", report) for i, entry in enumerate(value)]
        )
        if sound and self.distinct and len(set(map(repr, value))) != len(value):
            report.at(key, "lists a value twice")
            return False
        return sound


def count_message(count: int, least: int, most: int, what: str) -> str:
    """Say that a list has too few or too many entries."""
    return f"needs at least {least} {what}" if count < least else f"may have at most {most} {what}"


@dataclass(frozen=True)
class Table(Node):
    """A table with known keys: every required one present, no other."""

    fields: dict[str, Node]
    optional: frozenset[str] = frozenset()

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, dict):
            report.at(key, "must be a table")
            return False
        sound = True
        for name, node in self.fields.items():
            if name in value:
                sound = node.check(value[name], join(key, name), report) and sound
            elif name not in self.optional:
                report.missing(join(key, name), key)
                sound = False
        for name in value:
            if name not in self.fields:
                report.at(join(key, name), "unknown key")
                sound = False
        return sound


@dataclass(frozen=True)
class Tables(Node):
    """An array of tables (``[[name]]``), each of the same shape, at least ``least`` of them."""

    table: Table
    least: int = 1
    most: int = 1000

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            report.at(key, f"must be tables written as [[{key}]]")
            return False
        if not self.least <= len(value) <= self.most:
            report.at(key, count_message(len(value), self.least, self.most, f"[[{key}]] tables"))
            return False
        return all(
            [self.table.check(entry, f"{key}[{i}]", report) for i, entry in enumerate(value)]
        )


@dataclass(frozen=True)
class Mapping(Node):
    """A table whose keys are names the study chooses (a pattern), each of one shape."""

    value: Node
    pattern: str = r"[a-z0-9-]{1,30}"
    least: int = 1

    def check(self, value: Any, key: str, report: Report) -> bool:
        if not isinstance(value, dict):
            report.at(key, "must be a table")
            return False
        if len(value) < self.least:
            report.at(key, "must not be empty")
            return False
        sound = True
        for name, entry in value.items():
            if not re.fullmatch(self.pattern, name):
                report.at(join(key, name), "is not a valid name: use a-z, 0-9 and '-'")
                sound = False
            else:
                sound = self.value.check(entry, join(key, name), report) and sound
        return sound


#: What participant-facing text must not hold: a tag, or a web address.
MARKUP = re.compile(r"<[A-Za-z/!]|[a-z][a-z0-9+.-]*://|\bwww\.", re.IGNORECASE)
WORDS = Text(plain=True)

STUDY_ID = Text(r"[a-z0-9-]{3,40}", hint="3 to 40 of a-z, 0-9 and '-'")
SITE_ID = Text(r"[a-z0-9-]{2,30}", hint="2 to 30 of a-z, 0-9 and '-'")
ARM_ID = SITE_ID
NAME_ID = Text(r"[a-z0-9-]{1,30}", hint="1 to 30 of a-z, 0-9 and '-'")
VERSION = Text(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})", hint="<major>.<minor>, such as 1.0")

STUDY = Table(
    {
        "study": Table(
            {
                "id": STUDY_ID,
                "title": Text(),
                "languages": List(Text(choices=LANGUAGES)),
                "ends": Day(),
                # 25 years: the longest any trial archive rule asks for.
                "retention_days_after_end": Whole(0, 25 * 366),
            }
        ),
        "sites": Mapping(SITE_ID, pattern=r"[a-z]{2}"),
        "arms": Tables(
            Table(
                {
                    "id": ARM_ID,
                    "ratio": Whole(1, 100),
                    "gets": Text(choices=ARM_KINDS),
                    "waitlist_weeks": Whole(1, 52),
                },
                optional=frozenset({"waitlist_weeks"}),
            ),
            least=2,
        ),
        "allocation": Table(
            {
                "block_sizes": List(Whole(1, 1000)),
                "participants_per_stratum": Whole(1, 100_000),
            }
        ),
        "course": Table(
            {
                "sessions_min": Whole(1, 50),
                "sessions_max": Whole(1, 50),
                "weeks": Whole(1, 52),
                "boosters": Whole(0, 20),
                "session_minutes": Whole(10, 240),
            }
        ),
        "eligibility": Table(
            {
                "instrument": NAME_ID,
                "ineligible_account": Text(choices=INELIGIBLE_ACCOUNT),
                "rules": Tables(Table({"item": NAME_ID, "equals": NAME_ID})),
            }
        ),
        "consent": Table(
            {
                "current": VERSION,
                "versions": Tables(
                    Table(
                        {
                            "version": VERSION,
                            "folder": Text(),
                            "kind": Text(choices=CONSENT_KINDS),
                        }
                    )
                ),
            }
        ),
        "schedule": Tables(
            Table(
                {
                    "id": NAME_ID,
                    "instrument": NAME_ID,
                    "week": Whole(0, 520),
                    "after_session": Whole(1, 50),
                    "opens_days": Whole(-366, 366),
                    "closes_days": Whole(-366, 366),
                },
                # week may be left out only beside after_session (check_schedule).
                optional=frozenset({"week", "after_session"}),
            )
        ),
        "safety": Tables(
            Table(
                {
                    "id": NAME_ID,
                    "instrument": NAME_ID,
                    "score": NAME_ID,
                    "item": NAME_ID,
                    # Wide enough for any sum of 60 items' values.
                    "at_least": Whole(-100_000, 100_000),
                },
                optional=frozenset({"score", "item"}),
            )
        ),
    },
    # A study without safety rules leaves the table out.
    optional=frozenset({"safety"}),
)

INFORMATION = Table({"title": WORDS, "body": WORDS})

CONSENT = Table(
    {
        "title": WORDS,
        "body": WORDS,
        "items": Table(dict.fromkeys(CONSENT_ITEMS, WORDS)),
    }
)

INSTRUMENT = Table(
    {
        "id": NAME_ID,
        "minutes": Whole(1, 120),
        # Shorter pages let a long form be answered over several sittings.
        "per_page": Whole(1, MAX_PER_PAGE),
        "option_sets": Mapping(
            Table(
                {
                    "ids": List(NAME_ID, least=2),
                    "values": List(Whole(-1000, 1000), least=2, distinct=False),
                }
            )
        ),
        # 60 items keep every instrument's sealed answers within one padded block.
        "items": Tables(Table({"id": NAME_ID, "options": NAME_ID}), most=60),
        "scores": Mapping(Table({"items": List(NAME_ID)})),
        # The texts are checked against the items and option sets in check_instrument.
        "text": Mapping(
            Table(
                {
                    "title": WORDS,
                    "intro": WORDS,
                    "items": Mapping(WORDS),
                    "options": Mapping(Mapping(WORDS)),
                }
            ),
            pattern=r"[a-z]{2}",
        ),
    },
    optional=frozenset({"scores", "per_page"}),
)


# --- Reading files and finding lines ---------------------------------------------------


def join(table: str, name: str) -> str:
    """Return the dotted key of ``name`` inside ``table`` (the top level is ``""``)."""
    return f"{table}.{name}" if table else name


KEY_PART = re.compile(r'\s*([A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')\s*')


def split_key(text: str) -> tuple[list[str], str] | None:
    """Split ``a."b".c = rest`` into its key parts and what follows the ``=``."""
    parts = []
    position = 0
    while True:
        match = KEY_PART.match(text, position)
        if match is None:
            return None
        part = match.group(1)
        parts.append(part[1:-1] if part[0] in "\"'" else part)
        position = match.end()
        if text.startswith(".", position):
            position += 1
        elif text.startswith("=", position):
            return parts, text[position + 1 :]
        elif text.startswith("]", position):
            return parts, text[position:]
        else:
            return None


def index_lines(text: str) -> dict[str, int]:
    """Return the line of every table header and key in a TOML text, by dotted key.

    tomllib gives no line numbers, so this reads the lines itself: enough for the
    files of a study folder (headers, ``key = value``, multi-line strings), best effort
    beyond. Arrays of tables are numbered from 0, as in ``arms[1].ratio``.
    """
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    table = ""
    closing: str | None = None  # the quotes that end the multi-line string we are in
    for number, line in enumerate(text.splitlines(), start=1):
        if closing is not None:
            if closing in line:
                closing = None
            continue
        stripped = line.strip()
        if stripped.startswith("["):
            array = stripped.startswith("[[")
            parsed = split_key(stripped[2 if array else 1 :])
            if parsed is None:
                continue
            table = ""
            for part in parsed[0][:-1]:
                table = join(table, part)
                if table in counts:
                    table += f"[{counts[table] - 1}]"
            table = join(table, parsed[0][-1])
            if array:
                counts[table] = counts.get(table, 0) + 1
                table += f"[{counts[table] - 1}]"
            lines.setdefault(table, number)
            continue
        parsed = split_key(stripped)
        if parsed is None or not parsed[1] or parsed[1].startswith("]"):
            continue
        key = table
        for part in parsed[0]:
            key = join(key, part)
        lines.setdefault(key, number)
        for quotes in ('"""', "'''"):
            if parsed[1].count(quotes) % 2 == 1:
                closing = quotes
    return lines


@dataclass
class Report:
    """Collects the problems of one file, finding the line of each key it names."""

    file: str
    problems: list[Problem]
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int | None:
        """Return the line where ``key`` is written (a list entry: its list's line; an
        array of tables: its first table's line)."""
        if key not in self.lines and f"{key}[0]" in self.lines:
            return self.lines[f"{key}[0]"]
        while key:
            if key in self.lines:
                return self.lines[key]
            if not key.endswith("]"):
                return None
            key = key[: key.rindex("[")]
        return None

    def at(self, key: str, message: str) -> None:
        """Report a problem with the value written at ``key``."""
        self.problems.append(Problem(self.file, self.line_of(key), key, message))

    def missing(self, key: str, table: str) -> None:
        """Report a key that is not there at all (so it has no line)."""
        # An entry of an array of tables is named as it is, arms[1]; a table in brackets.
        where = (table if table.endswith("]") else f"[{table}]") if table else "the top of the file"
        self.problems.append(Problem(self.file, None, key, f"missing: add it to {where}"))

    def whole_file(self, message: str) -> None:
        """Report a problem with the file as a whole."""
        self.problems.append(Problem(self.file, None, "", message))


TOML_LINE = re.compile(r"at line (\d+)")


def read_toml(
    folder: Path, name: str, problems: list[Problem]
) -> tuple[dict[str, Any] | None, Report]:
    """Read one TOML file of the folder by its relative path; a file that cannot be read
    is one problem.

    :returns: its contents (``None`` when unreadable) and the report for its problems.
    """
    report = Report(name, problems)
    try:
        text = (folder / name).read_bytes().decode()
    except UnicodeDecodeError:
        report.whole_file("is not UTF-8 text")
        return None, report
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = TOML_LINE.search(str(error))
        line = int(found.group(1)) if found else None
        problems.append(Problem(name, line, "", f"is not valid TOML: {error}"))
        return None, report
    report.lines = index_lines(text)
    return data, report


def toml_files(folder: Path) -> list[str]:
    """Return the names of the ``.toml`` files directly in ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.suffix == ".toml")


# --- Checking --------------------------------------------------------------------------


def check_study(folder: Path) -> list[Problem]:
    """Return every problem of the study folder, in file order; an empty list means sound."""
    return read_study(folder)[0]


def load_study(folder: Path) -> Study:
    """Read a study folder.

    :raises StudyDefinitionError: listing every problem, when there is any.
    """
    problems, study = read_study(folder)
    if study is None:
        raise StudyDefinitionError(problems)
    return study


def read_study(folder: Path) -> tuple[list[Problem], Study | None]:
    """Check the whole folder and, when it is sound, build its :class:`Study`."""
    problems: list[Problem] = []
    if not (folder / "study.toml").is_file():
        problems.append(Problem("study.toml", None, "", "missing: a study folder needs it"))
        return problems, None
    data, sound, report = read_study_toml(folder, problems)
    # Without sound languages, every text file would look wrong: those checks wait.
    languages = data["study"]["languages"] if "study" in sound else None
    instruments = read_instruments(folder, languages, problems)
    information = read_information(folder, languages, report, problems)
    consent = read_consent(folder, data, languages, report, problems) if "consent" in sound else {}
    check_references(data, sound, instruments, report)
    if problems:
        return sorted(problems, key=order), None
    return [], build_study(folder, data, instruments, information, consent)


def order(problem: Problem) -> tuple[bool, str, int, str]:
    """Sort problems by file, then line (missing keys, which have none, last)."""
    return (problem.file != "study.toml", problem.file, problem.line or 1 << 30, problem.key)


def read_study_toml(
    folder: Path, problems: list[Problem]
) -> tuple[dict[str, Any], set[str], Report]:
    """Read and check ``study.toml`` on its own, table by table.

    :returns: its contents, the names of its top-level tables that are sound (the
        checks across tables and files use only those), and its report.
    """
    data, report = read_toml(folder, "study.toml", problems)
    sound: set[str] = set()
    if data is None:
        return {}, sound, report
    for name, node in STUDY.fields.items():
        if name not in data:
            if name not in STUDY.optional:
                report.missing(name, "")
        elif node.check(data[name], name, report):
            sound.add(name)
    for name in data:
        if name not in STUDY.fields:
            report.at(name, "unknown key")
    if {"study", "sites"} <= sound:
        languages = data["study"]["languages"]
        for language in languages:
            if language not in data["sites"]:
                report.missing(f"sites.{language}", "sites")
        for language in data["sites"]:
            if language not in languages:
                report.at(f"sites.{language}", f"{language} is not one of study.languages")
    if {"arms", "allocation"} <= sound:
        check_arms(data, report)
    if "course" in sound and data["course"]["sessions_min"] > data["course"]["sessions_max"]:
        report.at("course.sessions_min", "must not be more than sessions_max")
    if "eligibility" in sound:
        rules = data["eligibility"]["rules"]
        for i, rule in enumerate(rules):
            if rule["item"] in [earlier["item"] for earlier in rules[:i]]:
                report.at(f"eligibility.rules[{i}].item", "has a rule already")
    if "consent" in sound:
        check_consent_versions(data["consent"], report)
    if "schedule" in sound:
        sessions = data["course"]["sessions_max"] if "course" in sound else None
        check_schedule(data["schedule"], sessions, report)
    if "safety" in sound:
        check_safety(data["safety"], report)
    return data, sound, report


def check_arms(data: dict[str, Any], report: Report) -> None:
    """Check arm ids, waitlist weeks, and that every block size fits the ratios."""
    arms = data["arms"]
    for i, arm in enumerate(arms):
        key = f"arms[{i}]"
        if arm["id"] in [earlier["id"] for earlier in arms[:i]]:
            report.at(f"{key}.id", f"{arm['id']!r} is the id of an earlier arm")
        if arm["gets"] == "waitlist" and "waitlist_weeks" not in arm:
            report.missing(f"{key}.waitlist_weeks", key)
        if arm["gets"] != "waitlist" and "waitlist_weeks" in arm:
            report.at(f"{key}.waitlist_weeks", 'only an arm that gets "waitlist" has one')
    ratios = sum(arm["ratio"] for arm in arms)
    for i, size in enumerate(data["allocation"]["block_sizes"]):
        if size % ratios:
            report.at(
                f"allocation.block_sizes[{i}]",
                f"{size} is not a multiple of the arms' ratios' sum, {ratios}",
            )


def check_consent_versions(consent: dict[str, Any], report: Report) -> None:
    """Check that versions are distinct, oldest first, the first major, and kinds fit."""
    versions = consent["versions"]
    numbers = [tuple(int(n) for n in item["version"].split(".")) for item in versions]
    for i, item in enumerate(versions):
        key = f"consent.versions[{i}]"
        if item["folder"] != f"consent/{item['version']}":
            report.at(f"{key}.folder", f"must be consent/{item['version']}")
        if i == 0:
            if item["kind"] != "major":
                report.at(f"{key}.kind", 'the first version must be "major"')
            continue
        if numbers[i] <= numbers[i - 1]:
            report.at(f"{key}.version", "must come after the version before it (oldest first)")
        elif numbers[i][0] > numbers[i - 1][0] and item["kind"] != "major":
            report.at(f"{key}.kind", 'a new major number needs kind = "major"')
        elif numbers[i][0] == numbers[i - 1][0] and item["kind"] != "minor":
            report.at(f"{key}.kind", 'the same major number needs kind = "minor"')
    if consent["current"] not in [item["version"] for item in versions]:
        report.at("consent.current", f"{consent['current']} is not one of consent.versions")


def check_schedule(
    schedule: list[dict[str, Any]], sessions_max: int | None, report: Report
) -> None:
    """Check timepoint ids, windows and anchors, and that the first one is the baseline.

    :param sessions_max: the course's most sessions (``None`` when the course table has
        problems of its own), which a session-tied timepoint must not go beyond.
    """
    for i, point in enumerate(schedule):
        key = f"schedule[{i}]"
        if point["id"] in [earlier["id"] for earlier in schedule[:i]]:
            report.at(f"{key}.id", f"{point['id']!r} is the id of an earlier timepoint")
        if point["closes_days"] < point["opens_days"]:
            report.at(f"{key}.closes_days", "the window closes before it opens")
        session = point.get("after_session")
        if session is None and "week" not in point:
            report.missing(f"{key}.week", key)
        if i == 0 and session is not None:
            report.at(f"{key}.after_session", "the first timepoint is the baseline, at week 0")
        elif session is not None and sessions_max is not None and session > sessions_max:
            most = f"must not be more than course.sessions_max ({sessions_max})"
            report.at(f"{key}.after_session", most)
    if schedule[0].get("week", 0) != 0:
        report.at("schedule[0].week", "the first timepoint is the baseline: its week must be 0")


def check_safety(rules: list[dict[str, Any]], report: Report) -> None:
    """Check safety rule ids, and that each names exactly one of a score and an item."""
    for i, rule in enumerate(rules):
        key = f"safety[{i}]"
        if rule["id"] in [earlier["id"] for earlier in rules[:i]]:
            report.at(f"{key}.id", f"{rule['id']!r} is the id of an earlier rule")
        if "score" in rule and "item" in rule:
            report.at(f"{key}.item", "give either score or item, not both")
        elif "score" not in rule and "item" not in rule:
            report.at(key, "needs either score or item: what the rule looks at")


def check_references(
    data: dict[str, Any],
    sound: set[str],
    instruments: dict[str, Instrument | None],
    report: Report,
) -> None:
    """Check what ``study.toml`` names in other files: instruments, items and options."""
    if "schedule" in sound:
        for i, point in enumerate(data["schedule"]):
            if point["instrument"] not in instruments:
                report.at(f"schedule[{i}].instrument", unknown_instrument(point["instrument"]))
    if "safety" in sound:
        check_safety_references(data, sound, instruments, report)
    if "eligibility" not in sound:
        return
    eligibility = data["eligibility"]
    name = eligibility["instrument"]
    if name not in instruments:
        report.at("eligibility.instrument", unknown_instrument(name))
        return
    instrument = instruments[name]
    if instrument is None:
        return  # its own problems are reported; its items cannot be trusted yet
    for i, rule in enumerate(eligibility["rules"]):
        try:
            choices = instrument.choices(rule["item"])
        except KeyError:
            report.at(f"eligibility.rules[{i}].item", f"{name} has no item {rule['item']!r}")
            continue
        if rule["equals"] not in choices:
            report.at(
                f"eligibility.rules[{i}].equals",
                f"item {rule['item']!r} has no option {rule['equals']!r}",
            )


def check_safety_references(
    data: dict[str, Any],
    sound: set[str],
    instruments: dict[str, Instrument | None],
    report: Report,
) -> None:
    """Check that each safety rule names an instrument of the schedule, and a score or
    item of it that can reach ``at_least``: a rule that can never fire protects nobody."""
    scheduled = {point["instrument"] for point in data["schedule"]} if "schedule" in sound else None
    for i, rule in enumerate(data["safety"]):
        key = f"safety[{i}]"
        name = rule["instrument"]
        if name not in instruments:
            report.at(f"{key}.instrument", unknown_instrument(name))
            continue
        if scheduled is not None and name not in scheduled:
            report.at(
                f"{key}.instrument",
                f"no timepoint of the schedule uses {name!r}, so the rule would never be checked",
            )
        instrument = instruments[name]
        if instrument is None or ("score" in rule) == ("item" in rule):
            continue  # its own problems are reported already
        if "score" in rule:
            if rule["score"] not in instrument.scores:
                report.at(f"{key}.score", f"{name} has no score {rule['score']!r}")
                continue
            item_ids = list(instrument.scores[rule["score"]])
        else:
            try:
                instrument.item(rule["item"])
            except KeyError:
                report.at(f"{key}.item", f"{name} has no item {rule['item']!r}")
                continue
            item_ids = [rule["item"]]
        highest = sum(
            max(instrument.option_sets[instrument.item(item_id).options].values)
            for item_id in item_ids
        )
        if rule["at_least"] > highest:
            report.at(f"{key}.at_least", f"can never fire: the highest possible value is {highest}")


def unknown_instrument(name: str) -> str:
    """Say that an instrument named in study.toml has no file."""
    return f"no instruments/{name}.toml"


def read_instruments(
    folder: Path, languages: list[str] | None, problems: list[Problem]
) -> dict[str, Instrument | None]:
    """Read every instrument file; a file with problems maps to ``None``."""
    instruments: dict[str, Instrument | None] = {}
    for name in toml_files(folder / "instruments"):
        data, report = read_toml(folder, f"instruments/{name}", problems)
        stem = name.removesuffix(".toml")
        before = len(problems)
        if data is not None and INSTRUMENT.check(data, "", report):
            check_instrument(data, stem, languages, report)
        sound = data is not None and len(problems) == before
        instruments[stem] = parse_instrument(data) if sound and data is not None else None
    return instruments


def check_instrument(
    data: dict[str, Any], stem: str, languages: list[str] | None, report: Report
) -> None:
    """Check an instrument's references and that every study language is complete."""
    if data["id"] != stem:
        report.at("id", f"must be {stem!r}, the file's name")
    sets = data["option_sets"]
    for name, option_set in sets.items():
        if len(option_set["ids"]) != len(option_set["values"]):
            report.at(f"option_sets.{name}.values", "needs one value for each of ids")
    items = data["items"]
    item_ids = [item["id"] for item in items]
    for i, item in enumerate(items):
        if item["id"] in item_ids[:i]:
            report.at(f"items[{i}].id", f"{item['id']!r} is the id of an earlier item")
        if item["options"] not in sets:
            report.at(f"items[{i}].options", f"there is no [option_sets.{item['options']}]")
    for name, table in data.get("scores", {}).items():
        for j, item_id in enumerate(table["items"]):
            if item_id not in item_ids:
                report.at(f"scores.{name}.items[{j}]", f"there is no item {item_id!r}")
    if languages is None:
        return  # study.toml's own problems come first
    for language in languages:
        if language not in data["text"]:
            report.missing(f"text.{language}", "text")
    for language, text in data["text"].items():
        key = f"text.{language}"
        if language not in languages:
            report.at(key, f"{language} is not one of the study's languages")
            continue
        expect_names(text["items"], item_ids, f"{key}.items", report)
        expect_names(text["options"], list(sets), f"{key}.options", report)
        for name, words in text["options"].items():
            if name in sets:
                expect_names(words, sets[name]["ids"], f"{key}.options.{name}", report)


def expect_names(table: dict[str, Any], names: list[str], key: str, report: Report) -> None:
    """Report each of ``names`` missing from ``table`` and each key it has beyond them."""
    for name in names:
        if name not in table:
            report.missing(join(key, name), key)
    for name in table:
        if name not in names:
            report.at(join(key, name), "unknown key: there is no such item or option")


def read_information(
    folder: Path, languages: list[str] | None, study: Report, problems: list[Problem]
) -> dict[str, tuple[str, str]]:
    """Read the information page of every study language."""
    information: dict[str, tuple[str, str]] = {}
    present = toml_files(folder / "information")
    if languages is None:
        return information  # study.toml's own problems come first
    for language in languages:
        if f"{language}.toml" not in present:
            study.at("study.languages", f"{language} has no information/{language}.toml")
    for name in present:
        language = name.removesuffix(".toml")
        data, report = read_toml(folder, f"information/{name}", problems)
        if language not in languages:
            report.whole_file(f"{language} is not one of study.languages")
        elif data is not None and INFORMATION.check(data, "", report):
            information[language] = (data["title"], data["body"])
    return information


def read_consent(
    folder: Path,
    data: dict[str, Any],
    languages: list[str] | None,
    study: Report,
    problems: list[Problem],
) -> dict[str, dict[str, ConsentText]]:
    """Read every consent version's text in every study language."""
    texts: dict[str, dict[str, ConsentText]] = {}
    declared = {item["version"]: i for i, item in enumerate(data["consent"]["versions"])}
    root = folder / "consent"
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name not in declared:
            problems.append(Problem(f"consent/{path.name}", None, "", "is not in consent.versions"))
    if languages is None:
        return texts  # study.toml's own problems come first
    for version, i in declared.items():
        present = toml_files(root / version)
        texts[version] = {}
        for language in languages:
            if f"{language}.toml" not in present:
                study.at(
                    f"consent.versions[{i}].folder",
                    f"{language} has no consent/{version}/{language}.toml",
                )
        for name in present:
            language = name.removesuffix(".toml")
            content, report = read_toml(folder, f"consent/{version}/{name}", problems)
            if language not in languages:
                report.whole_file(f"{language} is not one of study.languages")
            elif content is not None and CONSENT.check(content, "", report):
                raw = (root / version / name).read_bytes()
                texts[version][language] = ConsentText(
                    content["title"],
                    content["body"],
                    dict(content["items"]),
                    hashlib.sha256(raw).hexdigest(),
                )
    return texts


def build_study(
    folder: Path,
    data: dict[str, Any],
    instruments: dict[str, Instrument | None],
    information: dict[str, tuple[str, str]],
    consent: dict[str, dict[str, ConsentText]],
) -> Study:
    """Build the :class:`Study` of a folder that has no problems."""
    study = data["study"]
    return Study(
        id=study["id"],
        title=study["title"],
        languages=tuple(study["languages"]),
        ends=study["ends"],
        retention_days_after_end=study["retention_days_after_end"],
        sites=dict(data["sites"]),
        arms=tuple(
            Arm(arm["id"], arm["ratio"], arm["gets"], arm.get("waitlist_weeks"))
            for arm in data["arms"]
        ),
        block_sizes=tuple(data["allocation"]["block_sizes"]),
        participants_per_stratum=data["allocation"]["participants_per_stratum"],
        course=Course(**data["course"]),
        eligibility_instrument=data["eligibility"]["instrument"],
        eligibility_rules=tuple(Rule(**rule) for rule in data["eligibility"]["rules"]),
        ineligible_account=data["eligibility"]["ineligible_account"],
        consent_current=data["consent"]["current"],
        consent_versions=tuple(
            ConsentVersion(item["version"], item["kind"], item["folder"], consent[item["version"]])
            for item in data["consent"]["versions"]
        ),
        schedule=tuple(
            Timepoint(
                point["id"],
                point["instrument"],
                point.get("week", 0),
                point["opens_days"],
                point["closes_days"],
                point.get("after_session"),
            )
            for point in data["schedule"]
        ),
        instruments={name: found for name, found in instruments.items() if found is not None},
        information=information,
        folder=folder,
        sha256=definition_sha256(folder),
        safety=tuple(
            SafetyRule(
                id=rule["id"],
                instrument=rule["instrument"],
                score=rule.get("score"),
                item=rule.get("item"),
                at_least=rule["at_least"],
            )
            for rule in data.get("safety", [])
        ),
    )


def definition_sha256(folder: Path) -> str:
    """Return the SHA-256 of every file in the folder, so that any edit changes it.

    Files go in by sorted relative path; each path and content is preceded by its
    length (8 bytes), so no two different folders hash the same bytes.
    """
    digest = hashlib.sha256(b"stillroom-study-definition-1\n")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    for path in sorted(files, key=lambda path: path.relative_to(folder).as_posix()):
        name = path.relative_to(folder).as_posix().encode()
        content = path.read_bytes()
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()
