"""What every ``stillroom`` command shares: the settings, the database, a calm failure.

:mod:`stillroom.webapp.cli`, :mod:`stillroom.webapp.staff_cli` and
:mod:`stillroom.webapp.study_cli` build on it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from sqlite_utils import Database

from stillroom.webapp.instance import DataDirError, check_data_dir, prepare_instance
from stillroom.webapp.settings import Settings, SettingsError, describe_settings
from stillroom.webapp.store import StoreUnwritableError, connect

SETTINGS_EPILOG: str = (
    "Settings come from STILLROOM_* environment variables, or from the TOML file named "
    "by STILLROOM_CONFIG (keys are the names without the prefix, in lower case); the "
    "environment wins over the file.\n\n\b\n" + describe_settings()
)


def load_settings(data_dir_must_exist: bool = True) -> Settings:
    """Read the settings, turning a bad value into a clear message and exit status 2.

    :param data_dir_must_exist: refuse, with exit status 1, a data directory that does
        not exist yet; only ``serve`` and ``restore`` make one.
    """
    try:
        settings = Settings.load()
    except SettingsError as error:
        raise click.UsageError(str(error)) from error
    try:
        check_data_dir(settings.data_dir, data_dir_must_exist)
    except DataDirError as error:
        fail(error)
    return settings


def fail(error: Exception) -> NoReturn:
    """Print an operator-facing error and exit with status 1."""
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)


def say(message: str) -> None:
    """Print a progress line at once (a supervisor reading the log must see it)."""
    click.echo(message)


@contextmanager
def open_database(settings: Settings) -> Iterator[Database]:
    """Create or upgrade the data directory and open its database.

    A database that cannot be written ends the command with the operator's error.
    """
    try:
        prepare_instance(settings)
        database = connect(settings.database_path)
        try:
            yield database
        finally:
            database.close()
    except StoreUnwritableError as error:
        fail(error)
