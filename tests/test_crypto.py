"""The crypto package: passphrase strength, normalisation, argon2 costs, key wrapping."""

from __future__ import annotations

import math
import threading

import pytest

from stillroom.crypto import kdf, keys, passphrase
from stillroom.crypto.box import (
    MessageUnavailableError,
    OpenedMessage,
    new_conversation_key,
    open_message,
    seal_message,
)
from stillroom.webapp.settings import LANGUAGES, Settings


@pytest.mark.parametrize("language", LANGUAGES)
def test_passphrases_have_at_least_90_bits(language):
    words = passphrase.wordlist(language)
    generated = passphrase.generate_passphrase(language).split(" ")
    assert len(generated) >= 7
    assert len(generated) * math.log2(len(set(words))) >= 90
    assert set(generated) <= set(words)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_word_survives_normalisation_unchanged(language):
    words = passphrase.wordlist(language)
    assert all(passphrase.normalise_passphrase(word) == word for word in words)
    assert all(" " not in word for word in words), "a word with a space would merge with others"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Apple  Banana\tcherry ", "apple banana cherry"),
        ("\u00c4rger", "\u00e4rger"),
        ("A\u0308rger", "\u00e4rger"),  # decomposed umlaut composes (NFC)
        ("STRASSE", "strasse"),
        ("\u01f0", "\u01f0"),  # casefold decomposes it; NFC afterwards recomposes
        ("one\ttwo\nthree", "one two three"),
    ],
)
def test_normalisation(typed, expected):
    assert passphrase.normalise_passphrase(typed) == expected


@pytest.mark.parametrize(
    "typed", ["a\x00b", "a\u202eb", "x" * 201, "a\x07b", "a\x1fb", "a\x0bb", "a\x85b", "a\u200bb"]
)
def test_normalisation_refuses_control_characters_and_huge_input(typed):
    with pytest.raises(passphrase.PassphraseInputError):
        passphrase.normalise_passphrase(typed)


def test_production_argon2_parameters_meet_rfc_9106():
    assert kdf.PRODUCTION.memory_kib >= 64 * 1024
    assert kdf.PRODUCTION.time_cost >= 3
    defaults = Settings()
    assert defaults.argon2 == kdf.PRODUCTION, "a deployment gets production costs by default"


def test_wrapped_key_opens_only_with_its_key():
    public, secret = keys.new_keypair()
    assert len(public) == len(secret) == 32
    deriver = kdf.KeyDeriver(kdf.FAST_FOR_TESTS, concurrency=1, wait_seconds=1)
    salt = keys.random_bytes(kdf.SALT_BYTES)
    key = deriver.derive(b"correct horse", salt)
    assert key == deriver.derive(b"correct horse", salt)
    wrapped = keys.wrap_key(secret, key)
    assert secret not in wrapped
    assert keys.unwrap_key(wrapped, key) == secret
    with pytest.raises(keys.UnwrapError):
        keys.unwrap_key(wrapped, deriver.derive(b"wrong horse", salt))
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(keys.UnwrapError):
        keys.unwrap_key(tampered, key)


def test_lookup_hash_depends_on_the_server_secret():
    a = keys.keyed_hash(b"same words", b"k" * 32, b"account-lookup")
    b = keys.keyed_hash(b"same words", b"j" * 32, b"account-lookup")
    assert a != b and len(a) == 32


def test_session_hash_and_key_are_unrelated():
    token = keys.new_token()
    assert len(token) >= 43
    assert keys.token_hash(token) != keys.token_key(token)


def test_saturated_deriver_says_busy_instead_of_queueing():
    deriver = kdf.KeyDeriver(kdf.FAST_FOR_TESTS, concurrency=1, wait_seconds=0.05)
    deriver._slots.acquire()  # another derivation is running
    try:
        with pytest.raises(kdf.KdfBusyError):
            deriver.derive(b"x", b"s" * 16)
    finally:
        deriver._slots.release()
    assert deriver.derive(b"x", b"s" * 16)


def test_concurrent_derivations_beyond_the_bound_get_busy():
    slow = kdf.Argon2Params(time_cost=3, memory_kib=64 * 1024, parallelism=1)  # ~0.2 s each
    deriver = kdf.KeyDeriver(slow, concurrency=2, wait_seconds=0)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt() -> None:
        start.wait(timeout=10)
        try:
            deriver.derive(b"x", b"s" * 16)
            outcomes.append("ok")
        except kdf.KdfBusyError:
            outcomes.append("busy")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 8
    assert outcomes.count("ok") >= 1 and outcomes.count("busy") >= 4


def test_a_message_opens_only_where_it_was_sealed():
    key = new_conversation_key()
    envelope = seal_message(key, "c1", 7, "therapist", 29_000_000, "Guten Abend 👋")
    assert open_message(key, "c1", 7, envelope) == OpenedMessage(
        "therapist", 29_000_000, "Guten Abend 👋"
    )
    for conversation, seq in (("c1", 8), ("c2", 7)):  # moved to another place
        with pytest.raises(MessageUnavailableError):
            open_message(key, conversation, seq, envelope)
    with pytest.raises(MessageUnavailableError):
        open_message(new_conversation_key(), "c1", 7, envelope)
    for position in (0, 1, 30, len(envelope) - 1):
        altered = bytearray(envelope)
        altered[position] ^= 1
        with pytest.raises(MessageUnavailableError):
            open_message(key, "c1", 7, bytes(altered))


def test_message_lengths_show_only_their_bucket():
    key = new_conversation_key()
    sizes = {
        len(seal_message(key, "c", 1, "participant", 1, text)) for text in ("", "ok", "x" * 250)
    }
    assert len(sizes) == 1
    longest = seal_message(key, "c", 1, "participant", 1, "ж" * 2000)  # 4,000 bytes of UTF-8
    assert len(longest) == len(seal_message(key, "c", 1, "participant", 1, "x" * 1100))
    with pytest.raises(ValueError):
        seal_message(key, "c", 1, "participant", 1, "😀" * 2100)
