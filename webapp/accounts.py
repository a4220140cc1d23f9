"""Participant accounts: create, find, unlock, re-key and delete.

Plain functions over a database and values, so the views, the CLI and the tests
all call the same code. The passphrase is only ever held in memory. An account is
found by a keyed hash of the passphrase that lives only as the tag of the account's
key slot, never in the database; its secret key is wrapped under an argon2id key that
only the passphrase gives, and locked under the slot's key as well, so that deleting
the account (its rows, then its slot) leaves nothing on the disk that opens.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
from dataclasses import dataclass

from sqlite_utils import Database

from stillroom.crypto.kdf import (
    KdfBusyError,
    KeyDeriver,
    unwrap_with_passphrase,
    wrap_with_passphrase,
)
from stillroom.crypto.keys import UnwrapError, keyed_hash, new_keypair
from stillroom.webapp.booking import seal_time_zone
from stillroom.webapp.chat import conversation_slots
from stillroom.webapp.hub import HUB
from stillroom.webapp.keyslots import (
    SlotGoneError,
    destroy_slots,
    doomed,
    find_slots,
    lock,
    new_slot,
    unlock,
)
from stillroom.webapp.notes import note_slots
from stillroom.webapp.store import checkpoint, transaction
from stillroom.webapp.study.intake import research_slots


class UnknownPassphraseError(Exception):
    """No account has this passphrase."""


class AccountExistsError(Exception):
    """An account with this passphrase exists already (the form was sent twice)."""


@dataclass(frozen=True)
class Unlocked:
    """An account whose secret key is open in memory for this request."""

    participant_id: str
    secret_key: bytes


def lookup_tag(passphrase: str, lookup_key: bytes) -> bytes:
    """Return the keyed hash that finds the account of a normalised ``passphrase``."""
    return keyed_hash(passphrase.encode(), lookup_key, b"account-lookup")


def _find(db: Database, tag: bytes) -> tuple[str, int, bytes] | None:
    """Return the account whose slot carries ``tag``: its id, slot and locked key."""
    for slot in find_slots(db, tag):
        row = db.execute(
            "SELECT id, wrapped_secret_key FROM participants WHERE slot = ?", [slot]
        ).fetchone()
        if row is not None:
            return str(row[0]), slot, bytes(row[1])
    return None


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
    tag = lookup_tag(passphrase, lookup_key)
    if _find(db, tag) is not None:
        raise AccountExistsError
    public_key, secret_key = new_keypair()
    wrapped = wrap_with_passphrase(deriver, secret_key, passphrase)
    participant_id = secrets.token_hex(16)
    with transaction(db):
        if _find(db, tag) is not None:  # the same form, sent twice at once
            raise AccountExistsError
        slot = new_slot(db, tag)
        db.table("participants").insert(
            {
                "id": participant_id,
                "slot": slot,
                "public_key": public_key,
                "wrapped_secret_key": lock(db, slot, wrapped),
                "last_login_day": today,
                "created_day": today,  # the day only: booking waits from its end
                "time_zone": seal_time_zone(time_zone, public_key),
            }
        )
    return Unlocked(participant_id, secret_key)


def unlock_account(
    db: Database, deriver: KeyDeriver, lookup_key: bytes, passphrase: str, today: str
) -> Unlocked:
    """Find the account of ``passphrase`` and open its secret key.

    A passphrase that matches no account fails before any argon2 work. A key wrapped
    with other argon2 costs than today's is wrapped again with today's, in a new slot.

    :raises UnknownPassphraseError: when no account matches.
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    tag = lookup_tag(passphrase, lookup_key)
    found = _find(db, tag)
    if found is None:
        raise UnknownPassphraseError
    participant_id, slot, locked = found
    try:
        opened = unwrap_with_passphrase(deriver, unlock(db, slot, locked), passphrase)
    except (SlotGoneError, UnwrapError):  # deleted a moment ago
        raise UnknownPassphraseError from None
    with transaction(db):
        db.execute(
            "UPDATE participants SET last_login_day = ? WHERE id = ?", [today, participant_id]
        )
    account = Unlocked(participant_id, opened.payload)
    if opened.outdated:
        with contextlib.suppress(KdfBusyError):  # busy: the next login tries again
            _rewrap(db, deriver, account, tag, passphrase, end_sessions=False)
    return account


def passphrase_matches(
    db: Database, lookup_key: bytes, participant_id: str, passphrase: str
) -> bool:
    """Return whether ``passphrase`` is the current one of the account (no argon2 needed)."""
    found = _find(db, lookup_tag(passphrase, lookup_key))
    return found is not None and found[0] == participant_id


def _rewrap(
    db: Database,
    deriver: KeyDeriver,
    account: Unlocked,
    tag: bytes,
    passphrase: str,
    end_sessions: bool,
) -> None:
    """Wrap the secret key under ``passphrase`` with today's costs, in a new slot.

    The old slot is destroyed once the change is saved, so the old wrapping's stale
    copies (in the write-ahead log, in freed blocks) open nothing, even with the old
    passphrase.

    :param end_sessions: end every session of the account (a new passphrase).
    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    wrapped = wrap_with_passphrase(deriver, account.secret_key, passphrase)
    with transaction(db):
        (old,) = db.execute(
            "SELECT slot FROM participants WHERE id = ?", [account.participant_id]
        ).fetchone()
        slot = new_slot(db, tag)
        db.execute(
            "UPDATE participants SET slot = ?, wrapped_secret_key = ? WHERE id = ?",
            [slot, lock(db, slot, wrapped), account.participant_id],
        )
        if end_sessions:
            db.execute("DELETE FROM sessions WHERE participant_id = ?", [account.participant_id])
        gone = doomed(db, [old])
    destroy_slots(db, gone)
    checkpoint(db)  # the old wrapping must not linger in the write-ahead log


def replace_passphrase(
    db: Database, deriver: KeyDeriver, lookup_key: bytes, account: Unlocked, new_passphrase: str
) -> None:
    """Re-wrap the account's secret key under ``new_passphrase``; the old one stops working.

    Every session of the account ends, since each holds a copy of the key.

    :raises stillroom.crypto.kdf.KdfBusyError: when argon2 is saturated.
    """
    tag = lookup_tag(new_passphrase, lookup_key)
    _rewrap(db, deriver, account, tag, new_passphrase, end_sessions=True)


def delete_account(db: Database, participant_id: str) -> None:
    """Delete the account and everything that hangs off it, destroy its slots, flush the WAL."""
    with transaction(db):
        gone = doomed(db, _delete_accounts(db, [participant_id]))
    destroy_slots(db, gone)
    checkpoint(db)
    HUB.publish_participant(participant_id)  # the therapist's open feed shows it is gone


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
        gone = doomed(db, _delete_accounts(db, unused))
    destroy_slots(db, gone)
    for participant_id in unused:
        HUB.publish_participant(participant_id)
    return len(unused)


def _delete_accounts(db: Database, participant_ids: list[str]) -> list[int]:
    """Inside a write transaction: delete the accounts; return the slots to destroy after.

    Deleting an account cascades to its sessions, appointments, pairs, therapists' notes,
    conversations and messages, and to its place in a study with its answers. Its own
    slot and its conversations', notes' and research data's slots are destroyed once the
    deletion is saved; until then nothing is gone, and a failed write changes nothing.
    """
    slots: list[int] = []
    for participant_id in participant_ids:
        slots += conversation_slots(db, "participant_id", participant_id)
        slots += note_slots(db, participant_id=participant_id)  # the pair goes: its notes too
        slots += research_slots(db, participant_id)  # and a study's research data
        row = db.execute("SELECT slot FROM participants WHERE id = ?", [participant_id]).fetchone()
        if row is not None:
            slots.append(int(row[0]))
        db.execute("DELETE FROM sessions WHERE participant_id = ?", [participant_id])
        db.execute("DELETE FROM participants WHERE id = ?", [participant_id])
    return slots
