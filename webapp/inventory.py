"""The data inventory: every table and column Stillroom stores, and why.

This is the published promise. A test fails when the database schema and this
inventory differ, and the privacy page is rendered from it, so nothing can be
stored without being declared here first.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import lazy_gettext as _l


@dataclass(frozen=True)
class Column:
    """One stored column.

    :param name: the column name in SQLite.
    :param purpose: why it is kept.
    :param encrypted: how it is protected at rest, or ``None`` when stored in clear.
    """

    name: str
    purpose: str
    encrypted: str | None = None


@dataclass(frozen=True)
class Table:
    """One table: what it is for, who can read it, and how long its rows live."""

    name: str
    purpose: str
    readers: str
    retention: str
    columns: tuple[Column, ...]
    public: bool = True


INVENTORY: tuple[Table, ...] = (
    Table(
        name="participants",
        purpose=_l("One row per account. There is no name, e-mail or other identifier."),
        readers=_l("The server, to let you log in."),
        retention=_l("Until you delete your account."),
        columns=(
            Column("id", _l("A random number that links your data together.")),
            Column(
                "lookup_hash",
                _l("A keyed hash of your passphrase, to find your account when you log in."),
                encrypted=_l("keyed hash; the passphrase itself is never stored"),
            ),
            Column("kdf_salt", _l("Random bytes used when deriving your key.")),
            Column("public_key", _l("Your public key, so messages can be encrypted to you.")),
            Column(
                "wrapped_secret_key",
                _l("Your secret key, locked with your passphrase."),
                encrypted=_l("encrypted under a key only your passphrase gives"),
            ),
            Column(
                "last_login_day",
                _l("The day (not the time) of your last login, to remove unused accounts."),
            ),
        ),
    ),
    Table(
        name="sessions",
        purpose=_l("Logged-in sessions. Your browser holds a random token; we hold its hash."),
        readers=_l("The server, while you are logged in."),
        retention=_l(
            "Deleted when you log out, after %(idle)s idle minutes, or %(hours)s hours after login."
        ),
        columns=(
            Column("token_hash", _l("A hash of the session token in your cookie.")),
            Column("participant_id", _l("The account the session belongs to.")),
            Column(
                "wrapped_secret_key",
                _l("Your secret key for this session, locked with the session token."),
                encrypted=_l("encrypted under a key only your cookie gives"),
            ),
            Column("idle_expires_at", _l("When the session ends if you do nothing.")),
            Column("absolute_expires_at", _l("When the session ends at the latest.")),
        ),
    ),
    Table(
        name="_sqlite_migrations",
        purpose=_l("Which versions of the database layout have been applied."),
        readers=_l("The server, when it starts."),
        retention=_l("Kept; it holds nothing about anyone."),
        columns=(
            Column("id", _l("Row number.")),
            Column("migration_set", _l("Name of the set of layout changes.")),
            Column("name", _l("Name of the layout change.")),
            Column("applied_at", _l("When the server applied it.")),
        ),
        public=False,
    ),
)


def declared_columns() -> dict[str, set[str]]:
    """Return ``{table: {column, ...}}`` as the inventory declares them."""
    return {table.name: {column.name for column in table.columns} for table in INVENTORY}
