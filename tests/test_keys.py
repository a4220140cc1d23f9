"""Keys destroyed in place, argon2 costs that can change, and older data that moves over."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys

import nacl.bindings
import nacl.secret
import pyotp
import pytest

from stillroom.crypto import kdf, keys
from stillroom.crypto.box import (
    LEGACY_ENVELOPE_VERSION,
    MessageUnavailableError,
    message_key,
    new_conversation_key,
    open_message,
    seal,
)
from stillroom.crypto.slots import SLOT_BYTES, SlotFile, SlotGoneError, create_slot_file
from stillroom.webapp import keyslots
from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.instance import subkey
from stillroom.webapp.retention import purge
from stillroom.webapp.settings import Settings, SettingsError
from stillroom.webapp.store import connect, migrations, transaction

from support import (
    ENDS,
    FAST_ARGON2,
    STARTS,
    AuthActions,
    Chat,
    Clock,
    LoopbackClient,
    TherapistActions,
    rows,
)

DAY = 24 * 3600


@pytest.fixture
def slot_file(tmp_path):
    path = tmp_path / "keys.slots"
    create_slot_file(path)
    slots = SlotFile(path)
    yield slots
    slots.close()


def test_a_destroyed_slot_is_overwritten_where_it_lies(slot_file):
    first, second = slot_file.create(), slot_file.create(b"t" * 32)
    key = slot_file.key(first)
    inode, size = os.stat(slot_file.path).st_ino, os.stat(slot_file.path).st_size
    assert key in slot_file.path.read_bytes()
    assert slot_file.destroy([first]) == 1
    content = slot_file.path.read_bytes()
    assert key not in content
    assert content[first * SLOT_BYTES : (first + 1) * SLOT_BYTES] == bytes(SLOT_BYTES)
    assert (os.stat(slot_file.path).st_ino, len(content)) == (inode, size), "same file, same place"
    with pytest.raises(SlotGoneError):
        slot_file.key(first)
    assert slot_file.find(b"t" * 32) == [second]
    assert slot_file.destroy([first]) == 0, "destroying twice is harmless"
    assert slot_file.create() == first, "a destroyed slot is the next one taken"


def test_a_slot_taken_again_meanwhile_is_not_destroyed_by_an_older_deletion(slot_file):
    """A deletion saved, then another process's purge frees the slot and a new account takes
    it, then the first deletion overwrites what it doomed: the new key must survive."""
    number = slot_file.create()
    seen = slot_file.read(number)
    assert slot_file.destroy([number]) == 1  # another process's purge, meanwhile
    assert slot_file.create(b"n" * 32) == number  # and someone new in the same place
    new_key = slot_file.key(number)
    assert slot_file.destroy_unchanged([(number, seen)]) == 0
    assert slot_file.key(number) == new_key
    assert slot_file.destroy_unchanged([(number, slot_file.read(number))]) == 1


def test_a_rolled_back_write_leaves_no_key_behind(app, settings):
    db = connect(settings.database_path)
    try:
        with pytest.raises(RuntimeError), transaction(db):
            slot = keyslots.new_slot(db, b"t" * 32)
            db.table("day_keys").insert({"expires_day": "2031-01-01", "slot": slot})
            raise RuntimeError("the write fails after the slot was taken")
    finally:
        db.close()
    slots = SlotFile(settings.data_dir / "keys.slots")
    try:
        assert slot not in slots.in_use()
    finally:
        slots.close()


def test_the_tag_index_notices_what_another_process_wrote(app, auth, settings):
    """Logins find accounts through an index in memory; a write to the file from outside
    (a purge run from the shell, say) is noticed, and a stale entry finds nothing."""
    passphrase = auth.create()
    auth.logout()
    assert auth.login(passphrase).status_code == 302
    auth.logout()
    [(slot,)] = rows(settings, "SELECT slot FROM participants")
    db = connect(settings.database_path)  # another process deletes the account ...
    try:
        db.execute("DELETE FROM participants")
    finally:
        db.close()
    with (settings.data_dir / "keys.slots").open("r+b") as outside:  # ... and its slot
        outside.seek(slot * SLOT_BYTES)
        outside.write(bytes(SLOT_BYTES))
    assert auth.login(passphrase).status_code == 401
    made_elsewhere = "acorn bishop candle dove ember fjord glade"
    script = (
        "import sys; from stillroom.webapp.accounts import create_account;"
        " from stillroom.webapp.store import connect; from stillroom.webapp.instance import subkey;"
        " from stillroom.crypto.kdf import KeyDeriver, FAST_FOR_TESTS; from pathlib import Path;"
        " d = Path(sys.argv[1]); db = connect(d / 'stillroom.db');"
        " key = subkey((d / 'server.key').read_bytes(), b'lookup-key');"
        " create_account(db, KeyDeriver(FAST_FOR_TESTS, 1, 5), key, sys.argv[2], '2027-01-15')"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(settings.data_dir), made_elsewhere],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert AuthActions(app.test_client()).login(made_elsewhere).status_code == 302


def test_the_slot_file_grows_in_zeroed_steps_and_finds_tags(slot_file):
    tags = [os.urandom(32) for _ in range(300)]
    numbers = [slot_file.create(tag) for tag in tags]
    assert numbers == list(range(300))
    assert os.stat(slot_file.path).st_size % (256 * SLOT_BYTES) == 0
    assert slot_file.find(tags[299]) == [299]
    assert slot_file.find(os.urandom(32)) == []
    assert slot_file.in_use() == set(range(300))


def test_a_wrapped_key_carries_its_argon2_costs(tmp_path):
    cheap = kdf.KeyDeriver(kdf.Argon2Params(1, 8 * 1024, 1), 1, 1)
    dearer = kdf.KeyDeriver(kdf.Argon2Params(3, 8 * 1024, 1), 1, 1)
    wrapped = kdf.wrap_with_passphrase(cheap, b"secret key", "seven words of a passphrase")
    version, time_cost, memory, lanes = struct.unpack_from(">BIIB", wrapped)
    assert (version, time_cost, memory, lanes) == (1, 1, 8 * 1024, 1)
    opened = kdf.unwrap_with_passphrase(dearer, wrapped, "seven words of a passphrase")
    assert opened == kdf.Unwrapped(b"secret key", outdated=True)
    assert not kdf.unwrap_with_passphrase(cheap, wrapped, "seven words of a passphrase").outdated
    with pytest.raises(keys.UnwrapError):
        kdf.unwrap_with_passphrase(cheap, wrapped, "another passphrase")
    absurd = struct.pack(">BIIB", 1, 1, 64 * 1024 * 1024, 1) + wrapped[10:]
    with pytest.raises(keys.UnwrapError):  # never asks for 64 GiB because a blob says so
        kdf.unwrap_with_passphrase(cheap, absurd, "seven words of a passphrase")


def settings_at(base: Settings, time_cost: int) -> Settings:
    return Settings.load(
        {},
        data_dir=base.data_dir,
        disk_reserve_mib=1,
        argon2_time_cost=time_cost,
        argon2_memory_kib=FAST_ARGON2["argon2_memory_kib"],
        argon2_parallelism=1,
    )


def slot_keys(settings: Settings, *numbers: int) -> list[bytes]:
    slots = SlotFile(settings.data_dir / "keys.slots")
    try:
        return [slots.key(number) for number in numbers]
    finally:
        slots.close()


def stored_time_cost(locked: bytes, slot: int, settings: Settings) -> int:
    slots = SlotFile(settings.data_dir / "keys.slots")
    try:
        wrapped = keys.unwrap_key(locked, slots.key(slot))
    finally:
        slots.close()
    return int(struct.unpack_from(">BI", wrapped)[1])


def test_accounts_made_at_t1_open_after_t3_and_are_rewrapped_at_t3(settings, clock):
    """Raising STILLROOM_ARGON2_TIME_COST locks nobody out, participant or therapist."""
    at_1 = settings_at(settings, 1)
    participant = AuthActions(create_participant_app(at_1, clock=clock).test_client())
    participant.client.__class__ = LoopbackClient
    passphrase = participant.create()
    therapist = TherapistActions(
        create_portal_app(at_1, clock=clock).test_client(), clock, at_1.database_path
    )
    therapist.client.__class__ = LoopbackClient
    therapist.create()
    [(p_slot, p_locked)] = rows(at_1, "SELECT slot, wrapped_secret_key FROM participants")
    [(t_slot, t_locked)] = rows(at_1, "SELECT slot, wrapped_secret_key FROM therapists")
    assert stored_time_cost(p_locked, p_slot, at_1) == stored_time_cost(t_locked, t_slot, at_1) == 1
    old_keys = slot_keys(at_1, p_slot, t_slot)

    at_3 = settings_at(settings, 3)
    participant = AuthActions(create_participant_app(at_3, clock=clock).test_client())
    participant.client.__class__ = LoopbackClient
    assert participant.login(passphrase).status_code == 302
    therapist.client = create_portal_app(at_3, clock=clock).test_client()
    therapist.client.__class__ = LoopbackClient
    assert therapist.login().status_code == 302

    [(p_new, p_locked)] = rows(at_3, "SELECT slot, wrapped_secret_key FROM participants")
    [(t_new, t_locked)] = rows(at_3, "SELECT slot, wrapped_secret_key FROM therapists")
    assert stored_time_cost(p_locked, p_new, at_3) == stored_time_cost(t_locked, t_new, at_3) == 3
    slot_bytes = (at_3.data_dir / "keys.slots").read_bytes()
    assert not any(key in slot_bytes for key in old_keys), "the weaker wrappings' keys are gone"
    participant.logout()
    assert participant.login(passphrase).status_code == 302, "and they open again at t=3"


def test_a_days_messages_die_with_its_key_while_the_conversation_goes_on(chat, settings, clock):
    """Weekly appointments share one conversation; each week's messages go on their own day."""
    chat.at(STARTS)
    assert chat.say("participant", "week one, private").status_code == 200
    [(conversation_id, seq, envelope, day)] = rows(
        settings, "SELECT conversation_id, seq, envelope, expires_day FROM messages"
    )
    [(day_slot,)] = rows(settings, "SELECT slot FROM day_keys WHERE expires_day = ?", [day])
    [(conversation_slot, sealed_copy)] = rows(
        settings, "SELECT slot, key_for_participant FROM conversations"
    )
    db = connect(settings.database_path)
    try:  # the pair books again, three weeks on: the conversation must stay
        db.execute(
            "UPDATE appointments SET starts_at = starts_at + ?, ends_at = ends_at + ?",
            [21 * DAY, 21 * DAY],
        )
        clock.now = ENDS + 14 * DAY
        assert purge(db, int(clock()), settings) > 0
    finally:
        db.close()
    assert rows(settings, "SELECT count(*) FROM conversations") == [(1,)]
    assert rows(settings, "SELECT count(*) FROM day_keys") == [(0,)]
    # A stale copy of the envelope, as the disk might keep it: the conversation key is
    # still there, its day's key is not, and no slot left in the file opens it.
    slots = SlotFile(settings.data_dir / "keys.slots")
    try:
        assert day_slot not in slots.in_use()
        conversation_key = keys.unwrap_key(sealed_copy, slots.key(conversation_slot))
        for slot in slots.in_use():
            with pytest.raises(MessageUnavailableError):
                open_message(
                    message_key(conversation_key, slots.key(slot)), conversation_id, seq, envelope
                )
    finally:
        slots.close()


# --- An instance from before key slots -----------------------------------------------


def legacy_envelope(key: bytes, conversation_id: str, seq: int, text: str) -> bytes:
    """A therapist's message as envelope v1 sealed it: under the conversation key itself."""
    body = (STARTS // 60).to_bytes(4, "big") + b"\x01" + text.encode()
    version = bytes([LEGACY_ENVELOPE_VERSION])
    associated = version + conversation_id.encode() + seq.to_bytes(8, "big")
    sealed = nacl.secret.Aead(key).encrypt(nacl.bindings.sodium_pad(body, 256), associated)
    return version + bytes(sealed)


def old_instance(settings: Settings, clock: Clock) -> dict[str, object]:
    """Write a data directory as the version before key slots did, with what it held.

    A participant (lookup hash, salted wrap), a therapist with a chosen password and
    a TOTP secret under the server key, a conversation and a message (envelope v1).
    """
    settings.data_dir.mkdir(mode=0o700)
    server_key = os.urandom(32)
    (settings.data_dir / "server.key").write_bytes(server_key)
    (settings.data_dir / "server.key").chmod(0o600)
    db = connect(settings.database_path)
    deriver = kdf.KeyDeriver(settings.argon2, 1, 5)
    try:
        migrations.apply(db, stop_before="lock_keys_in_slots")
        passphrase = "apple banana cherry dragon eagle falcon grape"
        public, secret = keys.new_keypair()
        salt = os.urandom(16)
        db.table("participants").insert(
            {
                "id": "p1",
                "lookup_hash": keys.keyed_hash(
                    passphrase.encode(), subkey(server_key, b"lookup-key"), b"account-lookup"
                ),
                "kdf_salt": salt,
                "public_key": public,
                "wrapped_secret_key": keys.wrap_key(
                    secret, deriver.derive(passphrase.encode(), salt)
                ),
                "last_login_day": "2027-01-15",
            }
        )
        password, totp = "Praxis-Anna-2024", pyotp.random_base32(32)
        t_public, t_secret = keys.new_keypair()
        t_salt = os.urandom(16)
        db.table("therapists").insert(
            {
                "id": "t1",
                "name": "Anna",
                "login_name": "abcd-efgh",
                "languages": "de,en",
                "time_zone": "Europe/Berlin",
                "password_hash": "$argon2id$v=19$m=8192,t=1,p=1$old",
                "kdf_salt": t_salt,
                "public_key": t_public,
                "wrapped_secret_key": keys.wrap_key(
                    t_secret, deriver.derive(password.encode(), t_salt)
                ),
                "totp_secret": keys.wrap_key(totp.encode(), subkey(server_key, b"totp-key")),
            }
        )
        conversation_key = new_conversation_key()
        db.table("conversations").insert(
            {
                "id": "c1",
                "participant_id": "p1",
                "therapist_id": "t1",
                "key_for_participant": seal(conversation_key, public),
                "key_for_therapist": seal(conversation_key, t_public),
            }
        )
        db.table("slots").insert(
            {
                "id": "s1",
                "therapist_id": "t1",
                "starts_at": STARTS,
                "ends_at": ENDS,
                "languages": "en",
            }
        )
        db.table("appointments").insert(
            {
                "id": "a1",
                "slot_id": "s1",
                "participant_id": "p1",
                "therapist_id": "t1",
                "starts_at": STARTS,
                "ends_at": ENDS,
                "language": "en",
            }
        )
        db.table("pairs").insert(
            {"participant_id": "p1", "therapist_id": "t1", "pseudonym": "KX7M-Q2PD"}
        )
        envelope = legacy_envelope(conversation_key, "c1", 1, "from before")
        db.table("messages").insert(
            {"conversation_id": "c1", "seq": 1, "envelope": envelope, "expires_day": "2027-02-01"}
        )
    finally:
        db.close()
    return {"passphrase": passphrase, "password": password, "totp": totp}


def test_an_instance_from_before_key_slots_moves_over_and_keeps_everything(settings, clock):
    clock.now = STARTS
    old = old_instance(settings, clock)
    app = create_participant_app(settings, clock=clock)  # migrates
    columns = {row[1] for row in rows(settings, "PRAGMA table_info(participants)")}
    assert "lookup_hash" not in columns and "kdf_salt" not in columns
    assert (settings.data_dir / "keys.slots").stat().st_mode & 0o777 == 0o600
    participant = AuthActions(app.test_client())
    participant.client.__class__ = LoopbackClient
    assert participant.login(str(old["passphrase"])).status_code == 302
    assert "from before" in participant.client.get("/en/chat/a1/feed").get_data(as_text=True)

    portal = TherapistActions(
        create_portal_app(settings, clock=clock).test_client(), clock, settings.database_path
    )
    portal.client.__class__ = LoopbackClient
    portal.secret, portal.login_names = str(old["totp"]), {"Anna": "abcd-efgh"}
    portal.passphrases["Anna"] = str(old["password"])
    landed = portal.login()
    assert landed.status_code == 302 and "/en/passphrase" in landed.location
    for page in ("/en/", "/en/availability", "/en/chat/a1"):  # nothing else until it is done
        assert "/en/passphrase" in portal.client.get(page).location, page
    response, new = portal.change_passphrase(current=str(old["password"]))
    assert response.status_code == 302
    assert rows(settings, "SELECT renew_passphrase, totp_secret FROM therapists") == [(0, None)]
    portal.logout()
    assert portal.login(passphrase=str(old["password"])).status_code == 401, "never again"
    assert portal.login(passphrase=new).status_code == 302
    feed = portal.client.get("/en/chat/a1/feed").get_data(as_text=True)
    assert "from before" in feed, "the key pair was rewrapped, not replaced"


def test_a_missing_slot_file_is_named_not_silently_replaced(settings, clock):
    create_participant_app(settings, clock=clock)
    (settings.data_dir / "keys.slots").unlink()
    with pytest.raises(SettingsError, match=r"keys\.slots is missing"):
        create_participant_app(settings, clock=clock)
    assert not (settings.data_dir / "keys.slots").exists()


def test_no_lookup_hash_is_left_in_the_database_after_the_move(settings, clock):
    old_instance(settings, clock)
    create_participant_app(settings, clock=clock)
    db = sqlite3.connect(settings.database_path)
    try:
        schema = " ".join(row[0] for row in db.execute("SELECT sql FROM sqlite_master") if row[0])
    finally:
        db.close()
    assert "lookup_hash" not in schema and "password_hash" not in schema


def test_a_new_account_passes_through_a_chat(chat: Chat, settings):
    """The fixture's own account and therapist sit in slots, and the chat works through them."""
    chat.at(STARTS)
    assert chat.say("participant", "hello").status_code == 200
    assert "hello" in chat.feed("therapist").get_data(as_text=True)
    [(slot,)] = rows(settings, "SELECT slot FROM conversations")
    [(version,)] = rows(settings, "SELECT substr(envelope, 1, 1) FROM messages")
    assert version == b"\x02" and slot is not None
