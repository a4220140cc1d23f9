"""Generated passphrases: the participant's only credential.

A participant never chooses a secret. The server draws words from a maintained
diceware list with the operating system's CSPRNG, so the strength of every
account is known in advance and no passphrase can be reused from elsewhere.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from functools import cache

from diceware.wordlist import WordList, get_wordlist_path

#: Words in every passphrase. Seven words from a 7,776-word list give about 90 bits.
WORD_COUNT = 7

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


@cache
def wordlist(language: str) -> tuple[str, ...]:
    """Return the distinct words of the diceware list used for ``language``.

    :raises KeyError: for a language without a list.
    """
    path = get_wordlist_path(WORDLIST_FOR_LANGUAGE[language])
    if path is None:  # pragma: no cover - the package ships these lists
        raise LookupError(f"diceware has no list for {language!r}")
    words = {normalise_passphrase(word) for word in WordList(path)}
    return tuple(sorted(words))


def entropy_bits(language: str) -> float:
    """Return the entropy of a generated passphrase for ``language`` in bits."""
    return WORD_COUNT * math.log2(len(wordlist(language)))


def generate_passphrase(language: str) -> str:
    """Draw a new passphrase of :data:`WORD_COUNT` words for ``language``."""
    words = wordlist(language)
    return " ".join(secrets.choice(words) for _ in range(WORD_COUNT))


def is_generated(passphrase: str, language: str) -> bool:
    """Return whether a normalised ``passphrase`` has the shape of one made for ``language``.

    :data:`WORD_COUNT` or more words, every one from the list. A second line of defence
    where only generated secrets may guard keys (a therapist's): it refuses passwords and
    made-up phrases, but words chosen from the list by a person pass. The strength comes
    from :func:`generate_passphrase`, whose result the server carries to the form sealed.
    """
    words = passphrase.split(" ")
    listed = set(wordlist(language))
    return len(words) >= WORD_COUNT and all(word in listed for word in words)


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
