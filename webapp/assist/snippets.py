"""The operator's snippet library, and the snippets related to a participant's latest messages.

A library is a folder with one subfolder per language (``en``, ``de``, ``cs``, ``pt``,
``es``) and one plain-text file per snippet in each: ``<lang>/<key>.txt``. A file's first
line is its title (shown to the therapist), then one blank line, then the text that the
therapist may put into the compose box. Every key exists in all five languages, so a
therapist finds the same material whatever language the participant writes in.

After the text, a file may have a cue section: a line ``---``, then one cue a line, each a
short sentence the way a participant might put what the snippet helps with ("I can't
switch off at night"). Cues only help to find the snippet: the therapist sees the title and
the text, and cues never reach the compose box or a participant.

Snippet and cue vectors may be cached on disk (they are the clinical team's texts, not
anyone's data). A participant's messages are embedded in memory for one lookup and never
kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy

from stillroom.webapp.assist.cache import embed_cached
from stillroom.webapp.assist.embed import Embedder
from stillroom.webapp.chat import MAX_MESSAGE_CHARS
from stillroom.webapp.settings import LANGUAGES

MAX_TITLE_CHARS = 80
KEY = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_KEY_CHARS = 40
# Tags, entities and Markdown links would reach a participant as literal clutter.
MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|&[a-zA-Z]+;|&#\d+;|\]\(")

# How much each of the participant's latest messages counts, newest first. On
# tests/data/assist_related.toml the newest alone (top-3 accuracy 0.87) did as well as
# weighing in the two before it (1, 0.5, 0.25: 0.86), and it lets a conversation move on
# at once; tests/bench/assist_retrieval.py --weights compares others.
MESSAGE_WEIGHTS: tuple[float, ...] = (1.0,)
# How a key's text similarity (the mean over its languages) and its best cue similarity (over
# its cues in all languages) make its score: "sum", "max" or "cues" (cues alone). On
# tests/data/assist_related.toml, with cues written without looking at it, the sum reached
# top-3 accuracy 1.00 in every language (top-1 0.89); the maximum and cues alone both 0.93
# in the lowest language (top-1 0.84): a cue, short like a message, is always closer than
# a text, so the maximum is the cues alone. tests/bench/assist_retrieval.py --scoring
# compares them.
SCORING = "sum"
# A lookup reads only the end of a long message, so that its cost stays bounded.
MAX_QUERY_CHARS = 600
# The line that starts a snippet file's cue section, and the limits of that section.
CUE_MARK = "---"
MAX_CUES = 10
MAX_CUE_CHARS = 200


class SnippetError(ValueError):
    """The snippet library has problems; each is a plain sentence naming its file."""


@dataclass(frozen=True)
class Snippet:
    """One vetted text of the library, in one language."""

    key: str
    lang: str
    title: str
    text: str


def check_library(folder: Path) -> list[str]:
    """Return every problem of the library in ``folder``, one sentence each naming the file."""
    problems, _, _ = read_library(folder)
    return problems


def read_library(folder: Path) -> tuple[list[str], list[Snippet], dict[Snippet, list[str]]]:
    """Read the whole library: every problem found (instead of stopping at the first), the
    snippets without one, and each one's cues."""
    if not folder.is_dir():
        return [f"{folder} is not a folder: give the snippet library's folder."], [], {}
    problems: list[str] = []
    snippets: list[Snippet] = []
    cues: dict[Snippet, list[str]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name not in LANGUAGES and not entry.name.startswith("."):
            problems.append(f"{entry}: not a language folder; use only {', '.join(LANGUAGES)}.")
    keys_by_lang: dict[str, set[str]] = {}
    for lang in LANGUAGES:
        lang_dir = folder / lang
        if not lang_dir.is_dir():
            problems.append(f"{lang_dir}: the language folder is missing; add it.")
            continue
        keys_by_lang[lang] = set()
        titles: dict[str, Path] = {}
        for path in sorted(lang_dir.iterdir()):
            if path.name.startswith("."):
                continue  # editors' and file managers' hidden files
            snippet, snippet_cues, problem = _read_snippet(path, lang)
            if problem:
                problems.append(f"{path}: {problem}")
            if path.suffix == ".txt" and KEY.fullmatch(path.stem):
                keys_by_lang[lang].add(path.stem)  # present, even if its text has a problem
            if snippet is None:
                continue
            if snippet.title in titles:
                problems.append(
                    f"{path}: the title is the same as in {titles[snippet.title].name};"
                    " give each snippet its own title."
                )
            titles.setdefault(snippet.title, path)
            if not problem:
                snippets.append(snippet)
                cues[snippet] = snippet_cues
    all_keys = set().union(*keys_by_lang.values()) if keys_by_lang else set()
    for lang, keys in keys_by_lang.items():
        for key in sorted(all_keys - keys):
            problems.append(
                f"{folder / lang / key}.txt: missing; each snippet needs a file per language."
            )
    if not problems and not snippets:
        problems.append(f"{folder}: the library has no snippets; add one or more per language.")
    return problems, snippets, cues


def _read_snippet(path: Path, lang: str) -> tuple[Snippet | None, list[str], str]:
    """Read one snippet file: the snippet (if its name is usable), its cues and its first
    problem, if any."""
    key = path.stem
    if not path.is_file() or path.suffix != ".txt":
        return None, [], "not a snippet file; name snippets like urge-surfing.txt."
    if not KEY.fullmatch(key) or len(key) > MAX_KEY_CHARS:
        return (
            None,
            [],
            (
                f"bad file name; use lower-case letters, digits and single hyphens,"
                f" at most {MAX_KEY_CHARS} characters, then .txt."
            ),
        )
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None, [], "cannot be read as UTF-8 text; save it as UTF-8."
    # Files saved on Windows are fine as they are; a byte-order mark is invisible anyway.
    raw = unicodedata.normalize("NFC", raw.removeprefix("\ufeff").replace("\r\n", "\n"))
    lines = raw.split("\n")
    marks = [i for i, line in enumerate(lines) if line.strip() == CUE_MARK]
    body = "\n".join(lines[: marks[0]] if marks else lines)
    cues = [line.strip() for line in lines[marks[0] + 1 :] if line.strip()] if marks else []
    title, blank, text = [*body.split("\n", 2), "", ""][:3]
    title, text = title.strip(), "\n".join(line.rstrip() for line in text.strip().split("\n"))
    snippet = Snippet(key=key, lang=lang, title=title, text=text)
    bad = next((char for char in raw if _forbidden(char)), None)
    if bad is not None:
        return (
            snippet,
            cues,
            (f"contains the invisible or control character U+{ord(bad):04X}; remove it."),
        )
    if MARKUP.search(raw):
        return snippet, cues, "contains markup (a tag, an entity or a link); write plain text only."
    return snippet, cues, _text_problem(title, blank, text) or _cue_problem(marks, cues)


def _text_problem(title: str, blank: str, text: str) -> str:
    """The first problem of a snippet's title and text, or an empty string."""
    if not title:
        return "the first line must be the title."
    if blank.strip():
        return "the second line must be blank, between the title and the text."
    if len(title) > MAX_TITLE_CHARS:
        return f"the title is longer than {MAX_TITLE_CHARS} characters; shorten it."
    if not text:
        return "the text is empty; write it after the title and a blank line."
    if len(text) > MAX_MESSAGE_CHARS:
        return (
            f"the text has {len(text)} characters, more than a chat message may have"
            f" ({MAX_MESSAGE_CHARS}); shorten it."
        )
    return ""


def _cue_problem(marks: list[int], cues: list[str]) -> str:
    """The first problem of a snippet's cue section (lines after ``---``), or an empty string."""
    if len(marks) > 1:
        return f"has more than one {CUE_MARK} line; keep one, before the cues."
    if marks and not cues:
        return f"the cue section after {CUE_MARK} is empty; add cues or remove the line."
    if len(cues) > MAX_CUES:
        return f"has {len(cues)} cues, more than {MAX_CUES}; keep the most telling ones."
    long = next((cue for cue in cues if len(cue) > MAX_CUE_CHARS), None)
    if long is not None:
        return f"the cue '{long[:30]}…' is longer than {MAX_CUE_CHARS} characters; shorten it."
    return ""


def _forbidden(char: str) -> bool:
    """Control and format characters (bidirectional overrides, zero-width ones): not text."""
    return char not in "\n\t" and unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


class Library:
    """The vetted snippets in memory, with one vector each for finding the related ones."""

    def __init__(
        self,
        snippets: Sequence[Snippet],
        vectors: numpy.ndarray,
        cue_keys: Sequence[str],
        cue_vectors: numpy.ndarray,
        embedder: Embedder,
    ):
        self._snippets = {(snippet.key, snippet.lang): snippet for snippet in snippets}
        self._keys = sorted({snippet.key for snippet in snippets})
        # A key scores the mean of its similarities in all five languages: one translation's
        # wording weighs less, and the model's weaker languages borrow from its stronger ones
        # (on tests/data/assist_related.toml, top-3 accuracy 0.86 against 0.80 for the
        # participant's language alone). The mean of the vectors gives the same scores.
        position = {key: i for i, key in enumerate(self._keys)}
        means = numpy.zeros((len(self._keys), vectors.shape[1]), dtype=numpy.float32)
        for snippet, vector in zip(snippets, vectors, strict=True):
            means[position[snippet.key]] += vector / len(LANGUAGES)
        self._means = means
        # Cues of every language count for their key, like the texts above.
        self._cue_owners = numpy.asarray([position[key] for key in cue_keys], dtype=numpy.intp)
        self._cue_vectors = cue_vectors.reshape(len(cue_keys), vectors.shape[1])
        self._embedder = embedder

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, cache_dir: Path | None = None) -> Library:
        """Read and check the library, and embed its snippets (from ``cache_dir`` when cached).

        :raises SnippetError: listing every problem, when the library has any.
        """
        problems, snippets, cues = read_library(folder)
        if problems:
            raise SnippetError(
                f"The snippet library {folder} has {len(problems)} problem(s); see"
                f" 'stillroom snippets check {folder}':\n" + "\n".join(problems)
            )
        passages = [passage_text(snippet) for snippet in snippets]
        vectors = embed_cached(embedder, "passage", passages, cache_dir)
        cue_keys = [snippet.key for snippet in snippets for _ in cues[snippet]]
        cue_texts = [cue for snippet in snippets for cue in cues[snippet]]
        # Cues are short, like a participant's messages, so they are embedded the same way.
        cue_vectors = embed_cached(embedder, "query", cue_texts, cache_dir)
        return cls(snippets, vectors, cue_keys, cue_vectors, embedder)

    def related(self, messages: Sequence[str], lang: str, k: int = 3) -> list[Snippet]:
        """Return the ``k`` snippets in ``lang`` closest to the latest of ``messages``.

        ``messages`` are the participant's, oldest first. They are embedded in memory
        for this call only.
        """
        latest = [text[-MAX_QUERY_CHARS:] for text in messages if text.strip()]
        latest = latest[-len(MESSAGE_WEIGHTS) :][::-1]
        if not latest or lang not in LANGUAGES or k < 1:
            return []
        weights = numpy.asarray(MESSAGE_WEIGHTS[: len(latest)], dtype=numpy.float32)
        query = weights @ self._embedder.queries(latest)
        best = numpy.argsort(-self._scores(query), kind="stable")[:k]
        return [self._snippets[self._keys[i], lang] for i in best]

    def _scores(self, query: numpy.ndarray) -> numpy.ndarray:
        """Each key's score for ``query``: see SCORING."""
        texts: numpy.ndarray = self._means @ query
        # A key without cues is found by its texts alone.
        cues: numpy.ndarray = texts.copy()
        has_cues = numpy.zeros(len(self._keys), dtype=bool)
        has_cues[self._cue_owners] = True
        cues[has_cues] = -numpy.inf
        numpy.maximum.at(cues, self._cue_owners, self._cue_vectors @ query)
        if SCORING == "max":
            best: numpy.ndarray = numpy.maximum(texts, cues)
            return best
        if SCORING == "cues":
            return cues
        summed: numpy.ndarray = texts + cues
        return summed

    def get(self, key: str, lang: str) -> Snippet | None:
        """Return the snippet ``key`` in ``lang``, or None when the library has none."""
        return self._snippets.get((key, lang))


def passage_text(snippet: Snippet) -> str:
    """The text a snippet is found by: its title and its text."""
    return f"{snippet.title}\n{snippet.text}"
