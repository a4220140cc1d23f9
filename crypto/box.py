"""Anonymous public-key boxes: encrypt to someone's public key, only they can open it.

Used for what one side writes for the other while the reader is not logged in,
such as a therapist's note on a cancelled appointment: the server seals it to the
participant's public key and afterwards cannot read it itself.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public


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
