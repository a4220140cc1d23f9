"""The data directory: database and server secret, private to the service's user."""

from __future__ import annotations

import os
from pathlib import Path

from stillroom.crypto.keys import keyed_hash, random_bytes
from stillroom.webapp.settings import Settings, SettingsError
from stillroom.webapp.store import migrate

#: The server secret: keys the account lookup hash, form tokens and pending passphrases.
SECRET_FILE = "server.key"  # noqa: S105 - a file name, not a secret


def prepare_instance(settings: Settings) -> bytes:
    """Create the data directory (0700), the server secret (0600) and the database.

    :returns: the 32-byte server secret.
    """
    data_dir = settings.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    secret = _read_or_create_secret(data_dir / SECRET_FILE)
    migrate(settings.database_path)
    return secret


def _read_or_create_secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        secret = path.read_bytes()
        if len(secret) != 32:
            raise SettingsError(
                f"{path} is damaged (not 32 bytes): restore it from your encrypted backup;"
                " without it no participant can log in"
            ) from None
        return secret
    with os.fdopen(fd, "wb") as handle:
        handle.write(random_bytes(32))
    return path.read_bytes()


def subkey(secret: bytes, purpose: bytes) -> bytes:
    """Derive an independent key for one ``purpose`` from the server secret."""
    return keyed_hash(b"", secret, purpose)
