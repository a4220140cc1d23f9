"""Participant accounts: create, find, unlock, re-key and delete.

Plain functions over a database and values, so the views, the CLI and the tests
all call the same code. The passphrase is only ever held in memory; the database
keeps a keyed hash to find the account and the secret key wrapped under an
argon2id key that only the passphrase gives.
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.crypto.kdf import SALT_BYTES, KeyDeriver
from stillroom.crypto.keys import keyed_hash, new_keypair, random_bytes, unwrap_key, wrap_key
from stillroom.webapp.chat import shred_keys
from stillroom.webapp.store import checkpoint, transaction


class UnknownPassphraseError(Exception):
    """No account has this passphrase."""


class AccountExistsError(Exception):
    """An account with this passphrase exists already (the form was sent twice)."""


@dataclass(frozen=True)
class Unlocked:
    """An account whose secret key is open in memory for this request."""

    participant_id: str
    secret_key: bytes


def lookup_hash(passphrase: str, lookup_key: bytes) -> bytes:
    """Return the keyed hash that finds the account of a normalised ``passphrase``."""
    return keyed_hash(passphrase.encode(), lookup_key, b"account-lookup")


def create_account(
    db: Database,
    deriver: KeyDeriver,
    lookup_key: bytes,
    passphrase: str,
    today: str,
    time_zone: str = "UTC",
) -> Unlocked:
    """Create an account for a normalised, server-generated ``passphrase``.

    :param time_zone: the band booking times are shown in (changeable later).

    :raises AccountExistsError: when the same confirmation arrives twice.
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    if db.execute(
        "SELECT 1 FROM participants WHERE lookup_hash = ?", [lookup_hash(passphrase, lookup_key)]
    ).fetchone():
        raise AccountExistsError
    public_key, secret_key = new_keypair()
    salt = random_bytes(SALT_BYTES)
    wrapped = wrap_key(secret_key, deriver.derive(passphrase.encode(), salt))
    participant_id = secrets.token_hex(16)
    try:
        with transaction(db):
            db.table("participants").insert(
                {
                    "id": participant_id,
                    "lookup_hash": lookup_hash(passphrase, lookup_key),
                    "kdf_salt": salt,
                    "public_key": public_key,
                    "wrapped_secret_key": wrapped,
                    "last_login_day": today,
                    "time_zone": time_zone,
                }
            )
    except sqlite3.IntegrityError:
        raise AccountExistsError from None
    return Unlocked(participant_id, secret_key)


def unlock_account(
    db: Database, deriver: KeyDeriver, lookup_key: bytes, passphrase: str, today: str
) -> Unlocked:
    """Find the account of ``passphrase`` and open its secret key.

    A passphrase that matches no account fails before any argon2 work.

    :raises UnknownPassphraseError: when no account matches.
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    row = db.execute(
        "SELECT id, kdf_salt, wrapped_secret_key FROM participants WHERE lookup_hash = ?",
        [lookup_hash(passphrase, lookup_key)],
    ).fetchone()
    if row is None:
        raise UnknownPassphraseError
    participant_id, salt, wrapped = row
    secret_key = unwrap_key(wrapped, deriver.derive(passphrase.encode(), salt))
    with transaction(db):
        db.execute(
            "UPDATE participants SET last_login_day = ? WHERE id = ?", [today, participant_id]
        )
    return Unlocked(participant_id, secret_key)


def passphrase_matches(
    db: Database, lookup_key: bytes, participant_id: str, passphrase: str
) -> bool:
    """Return whether ``passphrase`` is the current one of the account (no argon2 needed)."""
    row = db.execute(
        "SELECT 1 FROM participants WHERE id = ? AND lookup_hash = ?",
        [participant_id, lookup_hash(passphrase, lookup_key)],
    ).fetchone()
    return row is not None


def replace_passphrase(
    db: Database, deriver: KeyDeriver, lookup_key: bytes, account: Unlocked, new_passphrase: str
) -> None:
    """Re-wrap the account's secret key under ``new_passphrase``; the old one stops working.

    Every session of the account ends, since each holds a copy of the key.

    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    salt = random_bytes(SALT_BYTES)
    wrapped = wrap_key(account.secret_key, deriver.derive(new_passphrase.encode(), salt))
    with transaction(db):
        db.execute(
            "UPDATE participants SET lookup_hash = ?, kdf_salt = ?, wrapped_secret_key = ?"
            " WHERE id = ?",
            [lookup_hash(new_passphrase, lookup_key), salt, wrapped, account.participant_id],
        )
        db.execute("DELETE FROM sessions WHERE participant_id = ?", [account.participant_id])
    checkpoint(db)  # the old wrapping must not linger in the write-ahead log


def delete_account(db: Database, participant_id: str) -> None:
    """Delete the account and everything that hangs off it, and flush the WAL."""
    with transaction(db):
        _delete_accounts(db, [participant_id])
    checkpoint(db)


def purge_unused_accounts(db: Database, today: str, retention_days: int) -> int:
    """Delete every account whose last login is ``retention_days`` or more before ``today``.

    :param today: today's date (UTC) in ISO form, as ``last_login_day`` holds it.
    :returns: how many accounts went.
    """
    cutoff = datetime.date.fromisoformat(today) - datetime.timedelta(days=retention_days)
    with transaction(db):
        unused = [
            row[0]
            for row in db.execute(
                "SELECT id FROM participants WHERE last_login_day <= ?", [cutoff.isoformat()]
            )
        ]
        _delete_accounts(db, unused)
    return len(unused)


def _delete_accounts(db: Database, participant_ids: list[str]) -> None:
    """Inside a write transaction: conversation keys first, then the accounts.

    Deleting an account cascades to its sessions, appointments, pairs, conversations
    and messages; the conversation keys are shredded first all the same.
    """
    for participant_id in participant_ids:
        shred_keys(db, "participant_id", participant_id)
        db.execute("DELETE FROM sessions WHERE participant_id = ?", [participant_id])
        db.execute("DELETE FROM participants WHERE id = ?", [participant_id])
