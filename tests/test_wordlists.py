"""Generated passphrases hold no loaded word, keep their strength, and old ones still log in."""

from __future__ import annotations

import math
import unicodedata

import pytest

from stillroom.crypto import passphrase
from stillroom.webapp.settings import LANGUAGES


def plain(word: str) -> str:
    """Return ``word`` as a reader sees it: no case, no accents."""
    decomposed = unicodedata.normalize("NFD", word.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def read_blocklists() -> tuple[set[str], tuple[str, ...]]:
    """Read the data files directly, so the test does not trust the code it checks."""
    words: set[str] = set()
    stems: set[str] = set()
    for path in passphrase.BLOCKLIST_DIR.glob("*.txt"):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = plain(line.split("#", 1)[0].strip())
            if entry.endswith("*"):
                stems.add(entry[:-1])
            elif entry:
                words.add(entry)
    return words, tuple(stems)


BLOCKED_WORDS, BLOCKED_STEMS = read_blocklists()


def loaded(word: str) -> bool:
    return plain(word) in BLOCKED_WORDS or plain(word).startswith(BLOCKED_STEMS)


def test_the_blocklists_cover_every_category_the_issue_names():
    names = {path.stem for path in passphrase.BLOCKLIST_DIR.glob("*.txt")}
    assert names >= {"sexual", "children", "violence", "crime", "religion", "insults"}
    # The words the journey found, in the language it found them in.
    for word in ["kind", "nackt", "pervers", "porno", "teen", "tochter", "satan", "mord"]:
        assert loaded(word), word
    for word in ["childlike", "fondling", "grope", "seduce", "undress", "diaper"]:
        assert loaded(word), word
    for word in ["estupro", "abuso", "menininha", "sexo", "nina", "nino", "chicas", "virgen"]:
        assert loaded(word), word


@pytest.mark.parametrize("language", LANGUAGES)
def test_100000_passphrases_hold_no_blocked_word(language):
    drawn: set[str] = set()
    for _ in range(100_000):
        drawn.update(passphrase.generate_passphrase(language).split(" "))
    found = sorted(word for word in drawn if loaded(word))
    assert found == []
    assert len(drawn) > 7000  # the draw covered nearly the whole list


@pytest.mark.parametrize("language", LANGUAGES)
def test_filtered_lists_still_give_at_least_90_bits(language):
    words = set(passphrase.wordlist(language))
    assert len(words) < len(passphrase.source_wordlist(language))  # the filter took words
    count = len(passphrase.generate_passphrase(language).split(" "))
    assert count >= 7
    assert count * math.log2(len(words)) >= 90
    assert passphrase.entropy_bits(language) >= 90


def test_a_word_loaded_in_one_language_is_absent_from_every_list():
    lists = {language: set(map(plain, passphrase.wordlist(language))) for language in LANGUAGES}
    for language, words in lists.items():
        assert not words & BLOCKED_WORDS, language
    # Words that are harmless where they stand but read as loaded in another language.
    for word, language in [
        ("grab", "en"),  # German "Grab", a grave
        ("hell", "de"),  # English "hell"
        ("girl", "es"),  # English
        ("rape", "pt"),  # Portuguese snuff, English "rape"
        ("sons", "pt"),  # Portuguese sounds, English sons
        ("after", "de"),  # German "After", the anus
    ]:
        assert word in passphrase.source_wordlist(language), word
        assert word not in passphrase.wordlist(language), word


def old_passphrase(language: str) -> str:
    """Return a passphrase a release before the blocklists could draw: every word now blocked."""
    blocked = [w for w in passphrase.source_wordlist(language) if passphrase.is_blocked(w)]
    return " ".join(blocked[:8])


def test_a_participant_whose_passphrase_holds_a_now_blocked_word_still_logs_in(
    client, auth, monkeypatch
):
    old = old_passphrase("en")
    with monkeypatch.context() as before:  # the release before the filter
        before.setattr(
            "stillroom.webapp.participant.account.generate_passphrase", lambda language: old
        )
        assert auth.create() == old
    auth.logout()
    assert not passphrase.is_generated(old, "en")  # no new passphrase may hold these words
    assert auth.login(old).status_code == 302
    assert client.get("/en/account").status_code == 200


def test_a_therapist_whose_passphrase_holds_a_now_blocked_word_still_logs_in(
    therapist, monkeypatch
):
    old = old_passphrase("de")
    with monkeypatch.context() as before:  # the release before the filter
        before.setattr("stillroom.webapp.portal.account.generate_passphrase", lambda language: old)
        before.setattr(passphrase, "wordlist", passphrase.source_wordlist)
        therapist.create(languages=("de",))
    assert therapist.passphrases["Anna"] == old
    therapist.logout()
    assert not passphrase.is_generated(old, "de")
    assert therapist.login().status_code == 302
    assert therapist.client.get("/en/").status_code == 200
