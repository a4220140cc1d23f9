"""The SQLite store: pragmas on every connection, and a schema that matches the inventory."""

from __future__ import annotations

from stillroom.webapp.inventory import INVENTORY, declared_columns
from stillroom.webapp.store import connect


def test_every_connection_has_the_safety_pragmas(app, settings):
    db = connect(settings.database_path)
    try:
        pragma = lambda name: db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
        assert pragma("foreign_keys") == 1
        assert pragma("secure_delete") == 1
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("busy_timeout") > 0
        assert pragma("trusted_schema") == 0
    finally:
        db.close()


def test_schema_and_inventory_declare_the_same_columns(app, settings):
    db = connect(settings.database_path)
    try:
        actual = {
            table: {column.name for column in db[table].columns} for table in db.table_names()
        }
    finally:
        db.close()
    assert actual == declared_columns()


def test_every_inventory_entry_says_why_who_and_how_long():
    for table in INVENTORY:
        assert str(table.purpose) and str(table.readers) and str(table.retention)
        for column in table.columns:
            assert str(column.purpose), f"{table.name}.{column.name} has no purpose"


def test_secret_columns_are_declared_encrypted():
    encrypted = {
        (table.name, column.name)
        for table in INVENTORY
        for column in table.columns
        if column.encrypted
    }
    for secret in (
        ("participants", "wrapped_secret_key"),
        ("sessions", "wrapped_secret_key"),
        ("therapists", "wrapped_secret_key"),
        ("therapists", "totp_secret"),
        ("therapist_sessions", "wrapped_secret_key"),
        ("conversations", "key_for_participant"),
        ("conversations", "key_for_therapist"),
        ("messages", "envelope"),
        ("appointments", "cancel_note"),
    ):
        assert secret in encrypted, secret


def test_no_lookup_hash_or_chosen_password_is_stored(app, settings):
    """A participant is found through the tag of a key slot, which deletion overwrites."""
    columns = declared_columns()
    assert "lookup_hash" not in columns["participants"]
    assert "password_hash" not in columns["therapists"]
    assert not any("salt" in column for table in columns.values() for column in table)


def test_data_directory_is_private(app, settings):
    assert settings.data_dir.stat().st_mode & 0o777 == 0o700
    for path in settings.data_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name
