"""Encrypting a whole file to a public key (for backups), with libsodium's constructions.

A fresh key for libsodium's ``secretstream`` (XChaCha20-Poly1305 over chunks, each
authenticated, the last one marked final) is sealed (``SealedBox``) to the recipient's
X25519 public key; the file follows chunk by chunk. Only the holder of the secret key
can open it, and a changed, reordered, dropped or cut-off chunk makes opening fail
instead of yielding a shorter file. Memory stays at one chunk, whatever the file size.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import nacl.bindings as sodium
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

#: The first bytes of every sealed stream (and its format version).
MAGIC = b"STILLROOM-SEALED-STREAM-1\n"
CHUNK_BYTES = 64 * 1024
_SEALED_KEY_BYTES = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES + 48
_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_CIPHER_CHUNK = CHUNK_BYTES + sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


class StreamOpenError(Exception):
    """The stream is not ours, was changed or cut off, or the secret key is not its key."""


def new_recipient_keypair() -> tuple[bytes, bytes]:
    """Return a new (public key, secret key) pair for :func:`seal_stream`'s recipient."""
    secret = PrivateKey.generate()
    return bytes(secret.public_key), bytes(secret)


class SealingWriter:
    """A file to write into whose bytes reach ``destination`` only encrypted.

    Everything written is sealed chunk by chunk as it comes, so no plaintext copy
    exists anywhere but in memory, one chunk at a time. :meth:`close` writes the final
    chunk; a writer that is never closed leaves a stream that does not open (cut off).

    :param destination: where the sealed stream goes.
    :param public_key: the recipient's X25519 public key.
    """

    def __init__(self, destination: BinaryIO, public_key: bytes) -> None:
        self._destination = destination
        key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        destination.write(MAGIC + SealedBox(PublicKey(public_key)).encrypt(key) + header)
        self._pending = bytearray()
        self._closed = False

    def write(self, data: bytes) -> int:
        """Take ``data``; every full chunk is sealed and written at once."""
        if self._closed:
            raise ValueError("write to a closed sealing writer")
        self._pending += data
        while len(self._pending) > CHUNK_BYTES:  # more follows: not the final chunk
            self._push(bytes(self._pending[:CHUNK_BYTES]), _MESSAGE)
            del self._pending[:CHUNK_BYTES]
        return len(data)

    def close(self) -> None:
        """Seal what is left as the final chunk (once)."""
        if not self._closed:
            self._push(bytes(self._pending), _FINAL)
            self._pending.clear()
            self._closed = True

    def _push(self, chunk: bytes, tag: int) -> None:
        self._destination.write(
            sodium.crypto_secretstream_xchacha20poly1305_push(self._state, chunk, tag=tag)
        )


def seal_stream(source: BinaryIO, destination: BinaryIO, public_key: bytes) -> None:
    """Encrypt everything ``source`` holds to ``public_key`` and write it to ``destination``."""
    writer = SealingWriter(destination, public_key)
    while chunk := source.read(CHUNK_BYTES):
        writer.write(chunk)
    writer.close()


def open_stream(source: BinaryIO, destination: BinaryIO, secret_key: bytes) -> None:
    """Decrypt a stream made by :func:`seal_stream` into ``destination``.

    :raises StreamOpenError: for a foreign, changed or truncated stream, or the wrong key.
    """
    if source.read(len(MAGIC)) != MAGIC:
        raise StreamOpenError("not a sealed stream of this format")
    try:
        key = SealedBox(PrivateKey(secret_key)).decrypt(source.read(_SEALED_KEY_BYTES))
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(
            state, source.read(_HEADER_BYTES), key
        )
        while True:
            sealed = source.read(_CIPHER_CHUNK)
            if not sealed:
                raise StreamOpenError("the stream ends before its final chunk")
            chunk, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, sealed)
            destination.write(chunk)
            if tag == _FINAL:
                break
    except (CryptoError, ValueError, TypeError) as error:
        raise StreamOpenError("the stream was changed, or this is not its key") from error
    if source.read(1):
        raise StreamOpenError("bytes follow the final chunk")


def open_file_in_memory(path: Path, secret_key: bytes) -> io.BytesIO:
    """Decrypt a sealed file into memory, never onto the disk; return it rewound.

    Used where the plaintext must not touch the disk before it has been checked
    (a backup being restored, an export being opened).

    :raises OSError: when the file cannot be read.
    :raises StreamOpenError: as :func:`open_stream` does.
    """
    plain = io.BytesIO()
    with path.open("rb") as source:
        open_stream(source, plain, secret_key)
    plain.seek(0)
    return plain
