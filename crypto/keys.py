"""Key material: X25519 key pairs, SecretBox key wrapping and keyed hashes.

The database never holds a usable secret key: a participant's X25519 secret key
is stored only wrapped (XSalsa20-Poly1305 SecretBox) under a key that comes from
their passphrase or from a live session token.
"""

from __future__ import annotations

import secrets

import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.secret
import nacl.utils
from nacl.encoding import RawEncoder

#: Bytes of a wrapping key (SecretBox key size).
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE


class UnwrapError(Exception):
    """A wrapped key could not be opened: wrong key, or the stored bytes were altered."""


def new_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 key pair as ``(public_key, secret_key)`` bytes."""
    secret = nacl.public.PrivateKey.generate()
    return bytes(secret.public_key), bytes(secret)


def random_bytes(size: int = KEY_BYTES) -> bytes:
    """Return ``size`` bytes from the operating system's CSPRNG."""
    return nacl.utils.random(size)


def new_token() -> str:
    """Return a random 256-bit token, URL-safe, for session cookies."""
    return secrets.token_urlsafe(32)


#: Letters and digits that cannot be mistaken for each other (no 0/O, 1/I/L, U/V).
READABLE_ALPHABET = "ABCDEFGHJKMNPQRSTWXYZ23456789"


def readable_code() -> str:
    """Return a random name such as ``KX7M-Q2PD`` (about 39 bits), easy to read and type.

    Used where a person needs a random handle: a participant's pseudonym for a
    therapist, a therapist's private login name.
    """
    letters = "".join(secrets.choice(READABLE_ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


def wrap_key(secret_key: bytes, wrapping_key: bytes) -> bytes:
    """Encrypt ``secret_key`` under ``wrapping_key`` with an authenticated SecretBox."""
    return bytes(nacl.secret.SecretBox(wrapping_key).encrypt(secret_key))


def unwrap_key(wrapped: bytes, wrapping_key: bytes) -> bytes:
    """Open a key sealed by :func:`wrap_key`.

    :raises UnwrapError: when the key is wrong or the stored bytes were tampered with.
    """
    try:
        return bytes(nacl.secret.SecretBox(wrapping_key).decrypt(wrapped))
    except nacl.exceptions.CryptoError as error:
        raise UnwrapError("wrapped key cannot be opened") from error


def seal_value(value: bytes, key: bytes, associated: bytes) -> bytes:
    """Encrypt a small ``value`` (AEAD, XChaCha20-Poly1305) bound to ``associated`` data.

    For what the server hands out and takes back, such as the minute inside a form
    token: the holder learns nothing of the value and cannot move it elsewhere.
    """
    return bytes(nacl.secret.Aead(key).encrypt(value, associated))


def open_value(sealed: bytes, key: bytes, associated: bytes) -> bytes:
    """Open what :func:`seal_value` made with the same ``associated`` data.

    :raises UnwrapError: for a wrong key, other associated data, or altered bytes.
    """
    try:
        return bytes(nacl.secret.Aead(key).decrypt(sealed, associated))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as error:
        raise UnwrapError("sealed value cannot be opened") from error


def keyed_hash(data: bytes, key: bytes, purpose: bytes) -> bytes:
    """Return a 32-byte keyed BLAKE2b of ``data``, separated by ``purpose``.

    Used for the account lookup (so a wrong passphrase costs no argon2, and the
    database alone cannot be searched for a guessed passphrase without the server
    secret) and for deriving sub-keys of the server secret.

    :param purpose: at most 16 bytes naming what the hash is for.
    """
    return nacl.hash.blake2b(data, digest_size=32, key=key, person=purpose, encoder=RawEncoder)


def token_hash(token: str) -> bytes:
    """Return the hash under which a session token is stored (never the token)."""
    return nacl.hash.blake2b(
        token.encode(), digest_size=32, person=b"session-lookup", encoder=RawEncoder
    )


def token_key(token: str) -> bytes:
    """Return the key that wraps a session's copy of the secret key.

    The token has 256 random bits, so a fast hash is an adequate KDF; the key is
    separated from :func:`token_hash` by its personalisation so that the stored hash
    reveals nothing about it.
    """
    return nacl.hash.blake2b(
        token.encode(), digest_size=KEY_BYTES, person=b"session-wrapkey", encoder=RawEncoder
    )
