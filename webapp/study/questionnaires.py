"""Questionnaires: instruments read from data files, scored in memory, sealed at once.

Every item is a single choice from an option set, so an answer is a coded value and
never free text. Scores that are needed at submission (eligibility, safety rules) are
computed here in memory; the answers themselves are then sealed to the study's public
key, so the server keeps nothing it can read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from stillroom.crypto.box import seal

#: The most items one page of a form may show (issue 16: at most 10 a page).
MAX_PER_PAGE = 10
#: Sealed answers are padded to a multiple of this many bytes, so that the length of
#: what a seized disk holds does not tell which options were chosen (an instrument's
#: answers, 60 items at most, always fit in one block).
SEALED_BLOCK_BYTES = 4096


class AnswersError(ValueError):
    """Answers name an item or option the instrument lacks, or leave a scored item open."""


@dataclass(frozen=True)
class OptionSet:
    """The choices an item offers, in order, each with its value for scoring."""

    id: str
    options: tuple[str, ...]
    values: tuple[int, ...]

    def value(self, option: str) -> int:
        """Return the scoring value of ``option``."""
        return self.values[self.options.index(option)]


@dataclass(frozen=True)
class Item:
    """One question: a single choice from the option set it names."""

    id: str
    options: str


@dataclass(frozen=True)
class InstrumentText:
    """An instrument's words in one language."""

    title: str
    intro: str
    items: dict[str, str]
    options: dict[str, dict[str, str]]


@dataclass(frozen=True)
class Instrument:
    """A questionnaire (screening or assessment) as its data file declares it."""

    id: str
    minutes: int
    option_sets: dict[str, OptionSet]
    items: tuple[Item, ...]
    scores: dict[str, tuple[str, ...]]
    texts: dict[str, InstrumentText]
    #: The most items a page of its form shows.
    per_page: int = MAX_PER_PAGE

    def item(self, item_id: str) -> Item:
        """Return the item called ``item_id``.

        :raises KeyError: when the instrument has no such item.
        """
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)

    def choices(self, item_id: str) -> tuple[str, ...]:
        """Return the option ids ``item_id`` offers, in order."""
        return self.option_sets[self.item(item_id).options].options


def parse_instrument(data: dict[str, Any]) -> Instrument:
    """Build an instrument from a data file's contents that the study check has validated."""
    option_sets = {
        name: OptionSet(name, tuple(table["ids"]), tuple(table["values"]))
        for name, table in data["option_sets"].items()
    }
    texts = {
        language: InstrumentText(
            text["title"],
            text["intro"],
            dict(text["items"]),
            {name: dict(words) for name, words in text["options"].items()},
        )
        for language, text in data["text"].items()
    }
    return Instrument(
        id=data["id"],
        minutes=data["minutes"],
        option_sets=option_sets,
        items=tuple(Item(item["id"], item["options"]) for item in data["items"]),
        scores={name: tuple(table["items"]) for name, table in data.get("scores", {}).items()},
        texts=texts,
        per_page=data.get("per_page", MAX_PER_PAGE),
    )


def check_answers(instrument: Instrument, answers: dict[str, str]) -> None:
    """Refuse answers that name an unknown item, or an option their item does not offer.

    :raises AnswersError: naming the first such answer.
    """
    for item_id, option in answers.items():
        try:
            choices = instrument.choices(item_id)
        except KeyError:
            raise AnswersError(f"{instrument.id} has no item {item_id!r}") from None
        if option not in choices:
            raise AnswersError(f"item {item_id!r} of {instrument.id} has no option {option!r}")


def score(instrument: Instrument, answers: dict[str, str]) -> dict[str, int]:
    """Return each named score: the sum of its items' option values.

    :raises AnswersError: for an unknown item or option, or a scored item left unanswered
        (a partial sum would read as a lower score, which is worse than none).
    """
    check_answers(instrument, answers)
    totals = {}
    for name, item_ids in instrument.scores.items():
        missing = [item_id for item_id in item_ids if item_id not in answers]
        if missing:
            raise AnswersError(f"score {name!r} needs an answer to {', '.join(missing)}")
        totals[name] = sum(
            instrument.option_sets[instrument.item(item_id).options].value(answers[item_id])
            for item_id in item_ids
        )
    return totals


def pages(instrument: Instrument, per_page: int | None = None) -> list[list[Item]]:
    """Split the items, in order, into pages of at most ``per_page`` items.

    ``per_page`` defaults to the instrument's own (its file's ``per_page``, else 10).

    The pages are as even as they can be (11 items make pages of 6 and 5), so that no
    form ends on a lone question.

    :raises ValueError: when ``per_page`` is not between 1 and :data:`MAX_PER_PAGE`.
    """
    per_page = instrument.per_page if per_page is None else per_page
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
    items = list(instrument.items)
    count = math.ceil(len(items) / per_page)
    if count == 0:
        return []
    size, extra = divmod(len(items), count)
    result = []
    start = 0
    for number in range(count):
        end = start + size + (1 if number < extra else 0)
        result.append(items[start:end])
        start = end
    return result


def canonical_answers(answers: dict[str, str]) -> bytes:
    """Return the answers as canonical JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(answers, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal_answers(answers: dict[str, str], study_public_key: bytes) -> bytes:
    """Seal the answers to the study team's public key; the server cannot open them again.

    The plaintext is the canonical JSON followed by spaces up to a multiple of
    :data:`SEALED_BLOCK_BYTES` (``json.loads`` reads it as it is), so the sealed length
    tells nothing about the choices made.
    """
    plain = canonical_answers(answers)
    padded_size = max(1, math.ceil(len(plain) / SEALED_BLOCK_BYTES)) * SEALED_BLOCK_BYTES
    return seal(plain.ljust(padded_size, b" "), study_public_key)
