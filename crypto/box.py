"""Boxes: sealed to a public key, and the conversation envelope for chat messages.

A sealed box is for what one side writes for the other while the reader is not
logged in, such as a therapist's note on a cancelled appointment or a conversation
key: the server seals it to the reader's public key and afterwards cannot read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.utils

from stillroom.crypto.keys import keyed_hash


class UnsealError(Exception):
    """The box was not sealed to this key, or it was altered."""


def seal(plaintext: bytes, public_key: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of ``public_key``'s secret opens it."""
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(public_key)).encrypt(plaintext))


def open_sealed(sealed: bytes, secret_key: bytes) -> bytes:
    """Open a box made by :func:`seal`.

    :raises UnsealError: when it was sealed to another key or altered.
    """
    try:
        return nacl.public.SealedBox(nacl.public.PrivateKey(secret_key)).decrypt(sealed)
    except (nacl.exceptions.CryptoError, TypeError, ValueError) as error:
        raise UnsealError from error


# --- Conversations -----------------------------------------------------------------
#
# Each participant-therapist pair has a conversation key, sealed to both public keys.
# A message is AEAD-encrypted (XChaCha20-Poly1305) under a message key made from it and
# the key of the day the message expires (:func:`message_key`): the conversation key
# says who may read, the day key until when, and destroying the day key makes every
# stale copy of that day's messages unreadable, though the conversation goes on. The
# associated data binds the ciphertext to its conversation and sequence number, so a
# stored message that is moved to another place fails to open instead of showing
# there. The plaintext carries the sender and the send minute and is padded to a fixed
# bucket, so the row shows neither the time nor (beyond its bucket) the length.

#: The envelope format, stored as the first byte of every message row.
ENVELOPE_VERSION = 2
#: Messages stored before day keys, encrypted under the conversation key itself; they
#: still open until they expire.
LEGACY_ENVELOPE_VERSION = 1
#: Plaintext sizes a message is padded to (bytes, with its 5-byte header).
BUCKETS = (256, 1024, 4096, 8192)
SENDERS = ("participant", "therapist")


class MessageUnavailableError(Exception):
    """A stored message cannot be opened: altered, moved, or its key is gone."""


@dataclass(frozen=True)
class OpenedMessage:
    """A message as its reader sees it."""

    sender: str
    minute: int
    text: str


def new_conversation_key() -> bytes:
    """Return a fresh random key for one conversation."""
    return nacl.utils.random(nacl.secret.Aead.KEY_SIZE)


def message_key(conversation_key: bytes, day_key: bytes) -> bytes:
    """Return the key of a conversation's messages that expire on one day.

    A keyed BLAKE2b of the conversation key under the day's key: either key alone
    gives nothing, so a day's messages die with its key or with their conversation's.
    """
    return keyed_hash(conversation_key, day_key, b"message-key")


def _associated(version: int, conversation_id: str, seq: int) -> bytes:
    return bytes([version]) + conversation_id.encode() + seq.to_bytes(8, "big")


def envelope_version(envelope: bytes) -> int | None:
    """Return the format of a stored message, to pick its key (``None`` if unknown)."""
    if envelope and envelope[0] in (ENVELOPE_VERSION, LEGACY_ENVELOPE_VERSION):
        return envelope[0]
    return None


def seal_message(
    key: bytes, conversation_id: str, seq: int, sender: str, minute: int, text: str
) -> bytes:
    """Encrypt one message for storage as ``version byte || nonce || ciphertext``.

    :param key: the message key (:func:`message_key`).
    :param minute: the send time in whole minutes since the epoch (kept inside).
    :raises ValueError: for an unknown sender or a text too long for the largest bucket.
    """
    body = minute.to_bytes(4, "big") + bytes([SENDERS.index(sender)]) + text.encode()
    bucket = next((size for size in BUCKETS if len(body) < size), None)
    if bucket is None:
        raise ValueError("message too long for the largest bucket")
    padded = nacl.bindings.sodium_pad(body, bucket)
    associated = _associated(ENVELOPE_VERSION, conversation_id, seq)
    sealed = nacl.secret.Aead(key).encrypt(padded, associated)
    return bytes([ENVELOPE_VERSION]) + bytes(sealed)


def open_message(key: bytes, conversation_id: str, seq: int, envelope: bytes) -> OpenedMessage:
    """Open a message sealed by :func:`seal_message` at this conversation and place.

    :param key: the message key for the current version, the conversation key itself for
        the legacy one (:func:`envelope_version` tells which).
    :raises MessageUnavailableError: for an unknown envelope version, a wrong key, an
        altered ciphertext, or one that was moved to another conversation or place.
    """
    version = envelope_version(envelope)
    if version is None:
        raise MessageUnavailableError("unknown envelope")
    try:
        associated = _associated(version, conversation_id, seq)
        padded = nacl.secret.Aead(key).decrypt(envelope[1:], associated)
        body = nacl.bindings.sodium_unpad(padded, len(padded))
        sender = SENDERS[body[4]]
        return OpenedMessage(sender, int.from_bytes(body[:4], "big"), body[5:].decode())
    except (nacl.exceptions.CryptoError, ValueError, IndexError, UnicodeDecodeError) as error:
        raise MessageUnavailableError("cannot be opened") from error
