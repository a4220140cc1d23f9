"""Generated passphrases: the participant's only credential.

A participant never chooses a secret. The server draws words from a maintained
diceware list with the operating system's CSPRNG, so the strength of every
account is known in advance and no passphrase can be reused from elsewhere.

Participants write their passphrase on paper and read it back. For this audience a
word about sex, children, violence, crime or faith (in any of the five languages)
would be hurtful or dangerous to be found with, so every list is filtered through
the reviewed blocklists in ``blocklists/`` before a word is drawn.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from functools import cache
from pathlib import Path

from diceware.wordlist import WordList, get_wordlist_path

#: Fewest words in a generated passphrase; more where a filtered list is too short.
WORD_COUNT = 7

#: Strength every generated passphrase has at least, in bits.
MIN_BITS = 90

#: Reviewed data files of words no passphrase may hold (see ``sexual.txt`` for the format).
BLOCKLIST_DIR = Path(__file__).with_name("blocklists")

#: The diceware list used for each interface language. Czech has no maintained list
#: in the package, so Czech participants get the English EFF list (plain ASCII words).
WORDLIST_FOR_LANGUAGE = {
    "en": "en_eff",
    "de": "de",
    "cs": "en_eff",
    "pt": "pt-br",
    "es": "es",
}

#: Longest passphrase we accept as input; generated ones are far shorter.
MAX_INPUT_CHARS = 200


class PassphraseInputError(ValueError):
    """The submitted passphrase is too long or contains control characters."""


def fold(word: str) -> str:
    """Return ``word`` without case or accents, the form blocklists compare.

    "niño" and "nino" read the same to a participant, so a blocked word is blocked
    with or without its accents, in whichever list it appears.
    """
    decomposed = unicodedata.normalize("NFD", word.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


@cache
def blocklist() -> tuple[frozenset[str], tuple[str, ...]]:
    """Return the blocked words and the blocked stems of every blocklist file, folded.

    One word per line, ``#`` starts a comment, and a line ending in ``*`` is a stem
    that blocks every word starting with it. Every file applies to every language.
    """
    words: set[str] = set()
    stems: set[str] = set()
    for path in sorted(BLOCKLIST_DIR.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = fold(line.split("#", 1)[0].strip())
            if entry.endswith("*"):
                stems.add(entry.removesuffix("*"))
            elif entry:
                words.add(entry)
    return frozenset(words), tuple(sorted(stems))


def is_blocked(word: str) -> bool:
    """Return whether ``word`` is in a blocklist or starts with a blocked stem."""
    words, stems = blocklist()
    folded = fold(word)
    return folded in words or folded.startswith(stems)


@cache
def source_wordlist(language: str) -> tuple[str, ...]:
    """Return the distinct words of the diceware list for ``language``, unfiltered.

    :raises KeyError: for a language without a list.
    """
    path = get_wordlist_path(WORDLIST_FOR_LANGUAGE[language])
    if path is None:  # pragma: no cover - the package ships these lists
        raise LookupError(f"diceware has no list for {language!r}")
    words = {normalise_passphrase(word) for word in WordList(path)}
    return tuple(sorted(words))


@cache
def wordlist(language: str) -> tuple[str, ...]:
    """Return the words new passphrases for ``language`` are drawn from: no blocked one.

    :raises KeyError: for a language without a list.
    """
    return tuple(word for word in source_wordlist(language) if not is_blocked(word))


def word_count(language: str) -> int:
    """Return how many words a passphrase for ``language`` needs for :data:`MIN_BITS`.

    Filtering shortens a list, so a language whose list falls too short gets a word more.
    """
    needed = math.ceil(MIN_BITS / math.log2(len(wordlist(language))))
    return max(WORD_COUNT, needed)


def entropy_bits(language: str) -> float:
    """Return the entropy of a generated passphrase for ``language`` in bits."""
    return word_count(language) * math.log2(len(wordlist(language)))


def generate_passphrase(language: str) -> str:
    """Draw a new passphrase of :func:`word_count` words for ``language``."""
    words = wordlist(language)
    return " ".join(secrets.choice(words) for _ in range(word_count(language)))


def is_generated(passphrase: str, language: str) -> bool:
    """Return whether a normalised ``passphrase`` has the shape of a new one for ``language``.

    :func:`word_count` or more words, every one from today's filtered list. A second line
    of defence where only generated secrets may guard keys (a therapist's): it refuses
    passwords and made-up phrases, but words chosen from the list by a person pass. The
    strength comes from :func:`generate_passphrase`, whose result the server carries to
    the form sealed. Only new passphrases are checked: logins never consult the lists,
    so a passphrase made before a word was blocked keeps working.
    """
    words = passphrase.split(" ")
    listed = set(wordlist(language))
    return len(words) >= word_count(language) and all(word in listed for word in words)


def normalise_passphrase(text: str) -> str:
    """Return the canonical form of a typed passphrase.

    Participants copy passphrases by hand, so case, repeated or unusual spaces and
    Unicode composition must not matter: NFC, case-folded, single spaces.

    :raises PassphraseInputError: when the text is too long or holds control or
        format characters (tab and line breaks are folded like spaces).
    """
    if len(text) > MAX_INPUT_CHARS:
        raise PassphraseInputError("passphrase too long")
    if any(unicodedata.category(char)[0] == "C" and char not in "\t\n\r" for char in text):
        raise PassphraseInputError("control characters in passphrase")
    words = text.casefold().split()
    return unicodedata.normalize("NFC", " ".join(words))
