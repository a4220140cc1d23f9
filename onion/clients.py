"""Restricted discovery (client authorisation) for closed pilots.

With at least one client key configured, tor encrypts the service descriptor so
that only holders of a matching x25519 private key can even find the service.
Stillroom keeps only the public halves, one file per named client under
``onion-clients/`` (0600); the private half is printed once for the participant
and never stored.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import nacl.public

CLIENTS_DIR = "onion-clients"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class ClientNameError(ValueError):
    """A client name must be 1–32 lower-case letters, digits or hyphens."""


def _b32(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii").rstrip("=")


def _folder(data_dir: Path) -> Path:
    folder = data_dir / CLIENTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def add_client(data_dir: Path, name: str, address: str) -> str:
    """Create a key pair for client ``name``; keep the public half.

    :returns: the line the participant adds to Tor Browser (or to tor's
        ``ClientOnionAuthDir``): ``<address>:descriptor:x25519:<private key>``.
    :raises ClientNameError: for a bad or already used name.
    """
    if not NAME.fullmatch(name):
        raise ClientNameError(name)
    path = _folder(data_dir) / f"{name}.auth"
    secret = nacl.public.PrivateKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ClientNameError(f"{name} exists") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"descriptor:x25519:{_b32(bytes(secret.public_key))}\n")
    return f"{address.removesuffix('.onion')}:descriptor:x25519:{_b32(bytes(secret))}"


def list_clients(data_dir: Path) -> list[str]:
    """Return the names of the authorised clients."""
    folder = data_dir / CLIENTS_DIR
    return sorted(path.stem for path in folder.glob("*.auth")) if folder.exists() else []


def remove_client(data_dir: Path, name: str) -> bool:
    """Forget client ``name``; return whether it existed. Takes effect at the next publish."""
    if not NAME.fullmatch(name):
        raise ClientNameError(name)
    path = data_dir / CLIENTS_DIR / f"{name}.auth"
    if not path.exists():
        return False
    path.unlink()
    return True


def client_public_keys(data_dir: Path) -> list[str]:
    """Return the base32 public keys for ``ClientAuthV3``, one per client."""
    keys = []
    for name in list_clients(data_dir):
        line = (data_dir / CLIENTS_DIR / f"{name}.auth").read_text(encoding="ascii").strip()
        keys.append(line.rsplit(":", 1)[1])
    return keys
