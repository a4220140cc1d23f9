"""The ``stillroom`` command: serve the apps and look after the deployment."""

from __future__ import annotations

import logging

import click
import waitress

from stillroom.webapp import create_participant_app
from stillroom.webapp.settings import Settings, SettingsError, describe_settings

SETTINGS_EPILOG = (
    "Settings come from STILLROOM_* environment variables, or from the TOML file named "
    "by STILLROOM_CONFIG (keys are the names without the prefix, in lower case); the "
    "environment wins over the file.\n\n\b\n" + describe_settings()
)


def load_settings() -> Settings:
    """Read the settings, turning a bad value into a clear message and exit status 2."""
    try:
        return Settings.load()
    except SettingsError as error:
        raise click.UsageError(str(error)) from error


@click.group(epilog=SETTINGS_EPILOG)
@click.version_option(package_name="stillroom")
def main() -> None:
    """Stillroom: anonymous counselling over a Tor onion service."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command(epilog=SETTINGS_EPILOG)
@click.option(
    "--no-tor",
    is_flag=True,
    help="Serve without Tor, on 127.0.0.1 only, for development and tests.",
)
def serve(no_tor: bool) -> None:
    """Migrate the database and serve the participant app on 127.0.0.1."""
    if not no_tor:
        raise click.UsageError(
            "publishing through Tor is not built yet; run 'stillroom serve --no-tor' for now"
        )
    settings = load_settings()
    app = create_participant_app(settings)
    url = f"http://127.0.0.1:{settings.participant_port}/"
    click.echo(f"Participant app (development, no Tor): {url}")
    waitress.serve(
        app,
        host="127.0.0.1",
        port=settings.participant_port,
        threads=settings.server_threads,
        ident="",
        max_request_body_size=settings.max_request_kib * 1024 * 4,
        clear_untrusted_proxy_headers=True,
        expose_tracebacks=False,
    )
