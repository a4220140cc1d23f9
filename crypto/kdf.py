"""Argon2id key derivation behind a bounded semaphore.

Argon2id makes each passphrase guess expensive for anyone holding a copy of the
database. The same cost could let a flood of logins exhaust the server's memory,
so every derivation passes a bounded semaphore; when it is saturated the caller
gets :class:`KdfBusyError` at once instead of a queue that stalls everything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type, hash_secret_raw

from stillroom.crypto.keys import KEY_BYTES

#: Bytes of the per-account salt.
SALT_BYTES = 16


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters.

    :param time_cost: passes over memory.
    :param memory_kib: memory per derivation in KiB.
    :param parallelism: lanes.
    """

    time_cost: int
    memory_kib: int
    parallelism: int


#: RFC 9106, section 4, second recommended option: 64 MiB, t=3, p=4.
PRODUCTION = Argon2Params(time_cost=3, memory_kib=64 * 1024, parallelism=4)

#: Deliberately weak parameters for the test suite only.
FAST_FOR_TESTS = Argon2Params(time_cost=1, memory_kib=8 * 1024, parallelism=1)


#: Runs ``function(*args)`` somewhere and returns its result (see :class:`KeyDeriver`).
Runner = Callable[..., Any]


def _call_in_place(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


class KdfBusyError(Exception):
    """Every key-derivation slot is taken; the user should try again in a moment."""


class KeyDeriver:
    """Derives wrapping keys with argon2id, at most ``concurrency`` at a time.

    :param params: argon2id cost.
    :param concurrency: derivations allowed to run at once (bounds memory use at
        ``concurrency * params.memory_kib``).
    :param wait_seconds: how long a caller waits for a free slot before
        :class:`KdfBusyError`.
    :param runner: calls ``runner(function, *args)`` to run argon2 itself. The default
        calls it in place; a server with an event loop passes one that hands the work to
        a real thread, so that a login never stops every other connection.
    """

    def __init__(
        self,
        params: Argon2Params,
        concurrency: int,
        wait_seconds: float,
        runner: Runner | None = None,
    ) -> None:
        self.params = params
        self.wait_seconds = wait_seconds
        self._run: Runner = runner or _call_in_place
        self._slots = threading.BoundedSemaphore(concurrency)
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
        )

    @contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise KdfBusyError("all argon2 slots are busy")
        try:
            yield
        finally:
            self._slots.release()

    def derive(self, secret: bytes, salt: bytes) -> bytes:
        """Return a 32-byte key derived from ``secret`` and ``salt``.

        :raises KdfBusyError: when no slot frees up within ``wait_seconds``.
        """
        with self._slot():
            key: bytes = self._run(self._derive, secret, salt)
            return key

    def _derive(self, secret: bytes, salt: bytes) -> bytes:
        return hash_secret_raw(
            secret=secret,
            salt=salt,
            time_cost=self.params.time_cost,
            memory_cost=self.params.memory_kib,
            parallelism=self.params.parallelism,
            hash_len=KEY_BYTES,
            type=Type.ID,
        )

    def hash_password(self, password: str) -> str:
        """Return an argon2id hash of a therapist's password, in the PHC string format.

        :raises KdfBusyError: when no slot frees up within ``wait_seconds``.
        """
        with self._slot():
            encoded: str = self._run(self._hasher.hash, password)
            return encoded

    def verify_password(self, encoded: str, password: str) -> bool:
        """Return whether ``password`` matches the stored hash ``encoded``.

        :raises KdfBusyError: when no slot frees up within ``wait_seconds``.
        """
        with self._slot():
            try:
                matches: bool = self._run(self._hasher.verify, encoded, password)
            except (VerificationError, InvalidHashError):
                return False
            return matches

    def needs_rehash(self, encoded: str) -> bool:
        """Return whether a stored hash was made with other costs than today's."""
        return self._hasher.check_needs_rehash(encoded)
