"""Argon2id key derivation behind a bounded semaphore, and keys wrapped under a passphrase.

Argon2id makes each passphrase guess expensive for anyone holding a copy of the
database. The same cost could let a flood of logins exhaust the server's memory,
so every derivation passes a bounded semaphore; when it is saturated the caller
gets :class:`KdfBusyError` at once instead of a queue that stalls everything.
A wrapped key stores the costs and salt it was made with, so costs can be raised.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from stillroom.crypto.keys import KEY_BYTES, UnwrapError, random_bytes, unwrap_key, wrap_key

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

#: The highest costs a stored key may ask for (the settings' upper bounds): a wrapped
#: key altered to ask for more is refused rather than allowed to exhaust memory.
MAX = Argon2Params(time_cost=100, memory_kib=4 * 1024 * 1024, parallelism=64)


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
    :param before_waiting: called before each derivation waits for its slot and runs: a
        server lets go there of what must not be held that long (a database connection),
        or a flood of logins would hold all of them.
    """

    def __init__(
        self,
        params: Argon2Params,
        concurrency: int,
        wait_seconds: float,
        runner: Runner | None = None,
        before_waiting: Callable[[], None] | None = None,
    ) -> None:
        self.params = params
        self._before_waiting = before_waiting
        self.wait_seconds = wait_seconds
        self._run: Runner = runner or _call_in_place
        self._slots = threading.BoundedSemaphore(concurrency)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        if self._before_waiting is not None:
            self._before_waiting()
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise KdfBusyError("all argon2 slots are busy")
        try:
            yield
        finally:
            self._slots.release()

    def derive(self, secret: bytes, salt: bytes, params: Argon2Params | None = None) -> bytes:
        """Return a 32-byte key derived from ``secret`` and ``salt``.

        :param params: the costs to derive with; today's (:attr:`params`) by default.
            A key wrapped earlier is opened with the costs it was wrapped with.
        :raises KdfBusyError: when no slot frees up within ``wait_seconds``.
        """
        with self._slot():
            key: bytes = self._run(self._derive, secret, salt, params or self.params)
            return key

    @staticmethod
    def _derive(secret: bytes, salt: bytes, params: Argon2Params) -> bytes:
        return hash_secret_raw(
            secret=secret,
            salt=salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=KEY_BYTES,
            type=Type.ID,
        )


# --- Keys wrapped under a passphrase --------------------------------------------------
#
# A wrapped key carries the argon2id costs and salt it was made with, so that raising
# STILLROOM_ARGON2_* never locks anyone out: it opens with its own costs, and the
# caller wraps it again with today's (:attr:`Unwrapped.outdated`).

#: Format of a wrapped key: version, time cost, memory (KiB), lanes, then the salt.
_HEADER = struct.Struct(">BIIB")
WRAP_VERSION = 1
#: Keys wrapped before the costs were stored: a zero byte, the salt, the box. They
#: open with today's costs, which is what they were made with unless those changed.
LEGACY_WRAP_VERSION = 0


@dataclass(frozen=True)
class Unwrapped:
    """What a passphrase opened, and whether it was wrapped with other costs than today's."""

    payload: bytes
    outdated: bool


def wrap_with_passphrase(deriver: KeyDeriver, payload: bytes, passphrase: str) -> bytes:
    """Encrypt ``payload`` under an argon2id key of ``passphrase``, with today's costs.

    :raises KdfBusyError: when no argon2 slot frees up in time.
    """
    params = deriver.params
    salt = random_bytes(SALT_BYTES)
    key = deriver.derive(passphrase.encode(), salt, params)
    header = _HEADER.pack(WRAP_VERSION, params.time_cost, params.memory_kib, params.parallelism)
    return header + salt + wrap_key(payload, key)


def legacy_wrapped(salt: bytes, wrapped: bytes) -> bytes:
    """Return a key wrapped before costs were stored, as :func:`unwrap_with_passphrase` reads."""
    return bytes([LEGACY_WRAP_VERSION]) + salt + wrapped


def unwrap_with_passphrase(deriver: KeyDeriver, wrapped: bytes, passphrase: str) -> Unwrapped:
    """Open what :func:`wrap_with_passphrase` made, with the costs stored beside it.

    :raises UnwrapError: for a wrong passphrase, altered bytes or an unknown format.
    :raises KdfBusyError: when no argon2 slot frees up in time.
    """
    if wrapped[:1] == bytes([LEGACY_WRAP_VERSION]):
        params, rest = deriver.params, wrapped[1:]
        outdated = True  # its costs were never written down: store them now
    elif wrapped[:1] == bytes([WRAP_VERSION]) and len(wrapped) > _HEADER.size:
        _version, time_cost, memory_kib, parallelism = _HEADER.unpack_from(wrapped)
        params = Argon2Params(time_cost, memory_kib, parallelism)
        rest = wrapped[_HEADER.size :]
        if (
            not 1 <= time_cost <= MAX.time_cost
            or not 8 <= 8 * parallelism <= memory_kib <= MAX.memory_kib
        ):
            raise UnwrapError("implausible argon2id costs")
        outdated = params != deriver.params
    else:
        raise UnwrapError("unknown format")
    salt, box = rest[:SALT_BYTES], rest[SALT_BYTES:]
    key = deriver.derive(passphrase.encode(), salt, params)
    return Unwrapped(unwrap_key(box, key), outdated)
