"""The example study in examples/study: every language has every file and text the others have.

These checks only parse TOML, so that they stand apart from the study definition's validator;
the last one then runs that validator on the example.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from stillroom.webapp.study.definition import check_study, load_study

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "study"


def load(path: Path) -> dict:
    with path.open("rb") as file:
        return tomllib.load(file)


def leaf_keys(table: dict, prefix: str = "") -> set[str]:
    """The dotted paths of every string in a nested table, e.g. "items.participate"."""
    found = set()
    for key, value in table.items():
        if isinstance(value, dict):
            found |= leaf_keys(value, f"{prefix}{key}.")
        else:
            found.add(prefix + key)
    return found


def compare(keys_by_file: dict[str, set[str]], required: frozenset[str] = frozenset()) -> list[str]:
    """Name every key that some file of a group has (or must have) and another lacks."""
    every_key = set(required).union(*keys_by_file.values())
    return [
        f"{file} lacks {key}"
        for file, keys in keys_by_file.items()
        for key in sorted(every_key - keys)
    ]


def find_gaps(folder: Path) -> list[str]:
    """Every file or text key that one study language has and another lacks."""
    study = load(folder / "study.toml")
    languages = study["study"]["languages"]
    gaps = []

    # Consent versions form one group: every version declares the same items.
    groups = {
        "information": ["information"],
        "consent": [version["folder"] for version in study["consent"]["versions"]],
    }
    for subfolders in groups.values():
        keys_by_file = {}
        for subfolder in subfolders:
            for language in languages:
                name = f"{subfolder}/{language}.toml"
                if (folder / name).exists():
                    keys_by_file[name] = leaf_keys(load(folder / name))
                else:
                    gaps.append(f"{name} is missing")
            strays = {p.stem for p in (folder / subfolder).glob("*.toml")} - set(languages)
            gaps += [f"{subfolder}/{stray}.toml is not a study language" for stray in strays]
        gaps += compare(keys_by_file)

    for path in sorted((folder / "instruments").glob("*.toml")):
        instrument = load(path)
        # Each declared item and option needs a text, even if no language has one yet.
        required = {f"items.{item['id']}" for item in instrument["items"]}
        for item in instrument["items"]:
            option_set = instrument["option_sets"][item["options"]]
            required |= {f"options.{item['options']}.{option}" for option in option_set["ids"]}
        texts = instrument.get("text", {})
        keys_by_file = {}
        for language in languages:
            name = f"instruments/{path.name} [text.{language}]"
            if language in texts:
                keys_by_file[name] = leaf_keys(texts[language])
            else:
                gaps.append(f"{name} is missing")
        gaps += compare(keys_by_file, frozenset(required))
    return gaps


def participant_texts(folder: Path) -> list[tuple[str, str, str]]:
    """(file, language, text) for every longer text a participant reads in the study."""
    study = load(folder / "study.toml")
    texts = []
    for language in study["study"]["languages"]:
        subfolders = ["information"] + [v["folder"] for v in study["consent"]["versions"]]
        for subfolder in subfolders:
            path = folder / subfolder / f"{language}.toml"
            texts.append((f"{subfolder}/{language}.toml", language, load(path)["body"]))
        for path in sorted((folder / "instruments").glob("*.toml")):
            intro = load(path)["text"][language]["intro"]
            texts.append((f"instruments/{path.name}", language, intro))
    return texts


def page_words(language: str, msgid: str) -> str:
    """What the pages call a link in that language, from the translation catalog."""
    if language == "en":
        return msgid
    path = ROOT / "locale" / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as file:
        message = read_po(file).get(msgid)
    assert message is not None and message.string, f"{language} has no translation of {msgid!r}"
    return str(message.string)


def test_every_language_has_every_file_and_text_of_the_others():
    assert find_gaps(EXAMPLE) == []


def drop_line(path: Path, start: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(start)]
    assert len(kept) == len(lines) - 1, f"{start!r} is not one line of {path}"
    path.write_text("".join(kept))


@pytest.mark.parametrize(
    ("damage", "gap"),
    [
        (
            lambda folder: (folder / "information" / "cs.toml").unlink(),
            "information/cs.toml is missing",
        ),
        (
            lambda folder: drop_line(folder / "consent" / "1.1" / "pt.toml", "transcripts = "),
            "consent/1.1/pt.toml lacks items.transcripts",
        ),
        (
            lambda folder: drop_line(folder / "instruments" / "wellbeing.toml", 'urge = "Ich'),
            "instruments/wellbeing.toml [text.de] lacks items.urge",
        ),
        (
            lambda folder: drop_line(folder / "instruments" / "screening.toml", 'no = "Ne"'),
            "instruments/screening.toml [text.cs] lacks options.yesno.no",
        ),
    ],
    ids=["file", "consent-item", "instrument-item", "option"],
)
def test_a_text_missing_in_one_language_is_named(tmp_path, damage, gap):
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    damage(folder)
    assert gap in find_gaps(folder)


def test_an_item_without_text_in_any_language_is_named(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    path = folder / "instruments" / "wellbeing.toml"
    anchor = "\n[scores.wellbeing]"
    extra = '\n[[items]]\nid = "appetite"\noptions = "frequency"\n'
    path.write_text(path.read_text().replace(anchor, extra + anchor))
    assert "instruments/wellbeing.toml [text.en] lacks items.appetite" in find_gaps(folder)


def test_texts_are_plain_text_without_links():
    for file, _, text in participant_texts(EXAMPLE):
        assert "<" not in text and "://" not in text, file


def test_texts_name_the_crisis_link_as_the_pages_do():
    """A participant told to look for "Help now" must find a link of that name on the page."""
    for file, language, text in participant_texts(EXAMPLE):
        assert page_words(language, "Help now") in text, file


def test_information_and_consent_name_the_account_page_as_the_pages_do():
    for file, language, text in participant_texts(EXAMPLE):
        if not file.startswith("instruments/"):
            assert page_words(language, "Your account") in text, file


def test_the_example_passes_the_study_check():
    """The shipped example is what a study team copies first: the real validator accepts it."""
    study = load_study(EXAMPLE)
    assert list(study.languages) == ["en", "de", "cs", "pt", "es"]
    assert {arm.gets for arm in study.arms} == {"chat", "waitlist"}
    # Thoughts of self-harm "sometimes" or more often, and urges "often", fire a rule.
    assert [(rule.item, rule.at_least) for rule in study.safety] == [("self-harm", 2), ("urge", 3)]
    assert check_study(EXAMPLE) == []
