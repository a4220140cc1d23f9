"""The ``stillroom`` command: serve the apps and look after the deployment."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import gevent
import stem
from flask import Flask
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from stillroom.crypto.stream import new_recipient_keypair
from stillroom.onion import clients, service, tor
from stillroom.onion.errors import OnionKeyError, TorError, TorLostError
from stillroom.webapp import booking, therapists
from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.assist import worker
from stillroom.webapp.assist.cli import snippets
from stillroom.webapp.assist.keeper import Keeper
from stillroom.webapp.assist.llama import Supervisor
from stillroom.webapp.assist.pause import ModelPause
from stillroom.webapp.assist.service import socket_path
from stillroom.webapp.audit import run_audit
from stillroom.webapp.backup import BackupError, decode_key, restore_backup, write_backup
from stillroom.webapp.console import SETTINGS_EPILOG, fail, load_settings, open_database, say
from stillroom.webapp.instance import (
    DataDirError,
    DataDirInUseError,
    lock_data_dir,
    running_serve,
)
from stillroom.webapp.retention import purge as run_purge
from stillroom.webapp.server import create_servers, run_until_stopped
from stillroom.webapp.settings import Settings, SettingsError
from stillroom.webapp.staff_cli import researcher, therapist
from stillroom.webapp.store import StoreUnwritableError, unwritable_path
from stillroom.webapp.study.amendment import StudyChangedError
from stillroom.webapp.study.definition import StudyDefinitionError
from stillroom.webapp.study_cli import study


def start_tor(settings: Settings, waiting: bool = True, progress: tor.Progress = say) -> tor.Tor:
    """Launch a private tor or attach to the operator's, and wait for bootstrap.

    :param waiting: wait for bootstrap within its timeout; without it, tor is left to
        finish bootstrapping by itself.
    :param progress: told each change of tor's bootstrap progress.
    """
    if settings.tor_control:
        say(f"Attaching to tor at {settings.tor_control}")
        handle = tor.attach(settings.tor_control, settings.tor_control_password or None)
    else:
        say("Starting a private tor")
        extra = Path(settings.tor_extra_config) if settings.tor_extra_config else None
        handle = tor.launch(settings.data_dir, extra, say)
    try:
        tor.check_hardening(handle)
        if waiting and settings.tor_bootstrap_timeout:  # 0: at once (a tor kept offline)
            tor.wait_for_bootstrap(handle.controller, settings.tor_bootstrap_timeout, progress)
    except BaseException:
        handle.close()
        raise
    return handle


def defences(settings: Settings) -> service.Defences:
    """Return the onion service's flood defences from the settings."""
    return service.Defences(
        pow_queue_rate=settings.pow_queue_rate,
        pow_queue_burst=settings.pow_queue_burst,
        max_streams=settings.onion_max_streams,
    )


@click.group(epilog=SETTINGS_EPILOG)
@click.version_option(package_name="stillroom")
def main() -> None:
    """Stillroom: anonymous counselling over a Tor onion service."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stem").setLevel(logging.WARNING)  # its INFO lines are noise here


@main.command(epilog=SETTINGS_EPILOG)
@click.option(
    "--no-tor",
    is_flag=True,
    help="Serve without Tor, on 127.0.0.1 only, for development and tests.",
)
def serve(no_tor: bool) -> None:
    """Start Tor, publish the onion service and serve the participant app and the portal.

    Both listen on 127.0.0.1 only; the onion service is the participant app's only
    way in, and the portal is for a TLS reverse proxy.
    """
    settings = load_settings(data_dir_must_exist=False)
    try:
        # Kept open (and so locked) until the process ends.
        lock = lock_data_dir(settings, "no-tor" if no_tor else "tor")  # noqa: F841
    except (DataDirInUseError, DataDirError) as error:
        fail(error)
    except OSError as error:
        fail(unwritable_path(error, settings.data_dir) or error)
    try:
        app = create_participant_app(settings)
        servers = create_servers(app, create_portal_app(settings), settings)
    except (TorError, SettingsError, StoreUnwritableError) as error:
        fail(error)
    except (StudyDefinitionError, StudyChangedError) as error:
        fail(RuntimeError(f"STILLROOM_STUDY={settings.study}: {error}"))
    model = start_model(settings)
    pause = None if model is None else ModelPause(model, settings.assist_draft_seconds).start()
    support = start_support(settings)
    try:
        serve_apps(app, servers, settings, no_tor)
    finally:
        if pause is not None:
            pause.stop()
        for helper in (model, support):
            if helper is not None:
                helper.stop()


def start_support(settings: Settings) -> Keeper | None:
    """Start therapist support's own process when a feature needs it, and wait until it
    answers: a setting it cannot load stops serve here, with the worker's own line."""
    support = worker.keeper(settings)
    if support is None:
        return None
    path = socket_path(settings)
    say(f"Therapist support: starting its own process at low priority, on {path}")
    support.start()
    if not worker.wait_until_listening(path, worker.START_SECONDS, support.first_is_running):
        support.stop()
        ended = support.process.returncode if support.process else None
        why = worker.describe_status(ended) if ended is not None else "it did not answer in time"
        fail(RuntimeError(f"therapist support did not start: {why}"))
    return support


def start_model(settings: Settings) -> Supervisor | None:
    """Start the summary model's own process when serve runs it (``summary``, no address).

    Its failures never stop the apps: a draft then finds no model (see
    :class:`stillroom.webapp.assist.llama.Supervisor`).
    """
    if "summary" not in settings.assist_features or settings.assist_model_address:
        return None
    try:
        model = Supervisor(settings)
    except SettingsError as error:
        fail(error)
    model.start()
    say(f"Summary model: its own process at low priority, on {model.socket}")
    return model


def serve_apps(app: Flask, servers: list[WSGIServer], settings: Settings, no_tor: bool) -> None:
    """Serve both apps, through tor unless ``no_tor``, until stopped."""
    say(
        f"Therapist portal: http://127.0.0.1:{settings.portal_port}/"
        f" (public address {settings.portal_base_url}/)"
    )
    if no_tor:
        where = (
            f"for the onion service {settings.onion_address} (tor runs outside Stillroom)"
            if settings.onion_address
            else "development, no Tor"
        )
        say(f"Participant app ({where}): http://127.0.0.1:{settings.participant_port}/")
        run_until_stopped(servers, settings)
        return
    say(
        f"Participant app (the onion service's target): http://127.0.0.1:"
        f"{settings.participant_port}/; its onion address follows once tor is ready"
    )
    failure = serve_through_tor(app, servers, settings)
    if failure is not None:
        fail(failure)


def serve_through_tor(app: Flask, servers: list[WSGIServer], settings: Settings) -> TorError | None:
    """Serve both apps at once, publish the onion service meanwhile, and keep it up.

    A tor that is slow to bootstrap keeps nobody from the portal.

    :returns: what stopped the first start (the operator's to fix), or ``None`` after a stop.
    """
    onion_service = OnionService(app, settings)
    failures: list[TorError] = []

    def publish_and_keep_up() -> None:
        reporter = gevent.spawn(report_waiting, onion_service)
        try:
            onion_service.publish()
        except TorError as error:
            failures.append(error)
            return  # ends serving: the operator has something to fix first
        finally:
            reporter.kill()
        onion_service.keep_up()

    try:
        run_until_stopped(servers, settings, publish_and_keep_up)
    finally:
        onion_service.stop()
    return failures[0] if failures else None


#: How often serve says what it still waits for while tor gets ready.
WAITING_REPORT_SECONDS = 30


def report_waiting(onion_service: OnionService) -> None:
    """Say every :data:`WAITING_REPORT_SECONDS` what serve waits for and what to check."""
    started = time.monotonic()
    while True:
        time.sleep(WAITING_REPORT_SECONDS)  # a greenlet sleep; killed once tor is ready
        say(onion_service.waiting_line(round(time.monotonic() - started)))


#: Seconds before the first try to bring tor back; every try that fails doubles it.
RETRY_FIRST_SECONDS = 1
#: The longest pause between tries.
RETRY_LAST_SECONDS = 30
#: How long tor must have run for its next loss to be retried after the first pause again.
RETRY_RESET_SECONDS = 30


@dataclass
class OnionService:
    """The participant app's onion service as serve keeps it up, through tor restarts too."""

    app: Flask
    settings: Settings
    handle: tor.Tor | None = None
    uploads: service.UploadLog | None = None
    address: str | None = None
    lost: Event = field(default_factory=Event)
    #: What the first start waits for: ``start``, ``bootstrap`` or ``upload``.
    stage: str = "start"
    #: Tor's last bootstrap progress line.
    progress: str = ""

    def publish(self, waiting: bool = True) -> None:
        """Start or attach tor and publish the service with its key (the same address).

        :param waiting: wait for bootstrap and the first descriptor upload within their
            timeouts, to report what the operator must fix at the first start. When tor
            comes back, tor finishes both by itself: a slow network must not make serve
            give up on a tor that works.
        :raises TorError: when a step fails; :meth:`drop` lets go of what was started.
        """
        data_dir = self.settings.data_dir
        # read_key refuses a damaged key before tor starts; a key gone since the first
        # publication would bring the service back at a new address, unnoticed.
        if service.read_key(data_dir) is None and self.address:
            raise OnionKeyError(str(data_dir / service.KEY_FILE))
        self.lost = Event()  # a fresh one: a late call from an earlier tor must not count
        try:
            self.stage = "start"
            self.handle = start_tor(self.settings, waiting, self.note_progress)
            self.stage = "upload"
            self.handle.watch(self.lost.set)
            self.uploads = service.UploadLog(self.handle.controller, data_dir)
            address = service.publish(
                self.handle.controller,
                data_dir,
                self.settings.participant_port,
                defences(self.settings),
                clients.client_public_keys(data_dir),
                # 0 waits for no upload, like a bootstrap timeout of 0 (a tor kept offline).
                (self.settings.tor_publish_timeout or None) if waiting else None,
            )
        except stem.SocketError as error:  # tor went away in the middle of a command
            raise TorLostError from error
        self.uploads.track(address)
        self.address = address
        self.app.config["ONION_ADDRESS"] = address
        say(f"Onion service published: http://{address}/")

    def note_progress(self, line: str) -> None:
        """Print tor's bootstrap progress and keep it for :meth:`waiting_line`."""
        self.stage = "bootstrap"
        self.progress = line
        say(line)

    def waiting_line(self, seconds: int) -> str:
        """Say in one line what the first start waits for, and what the operator can check."""
        settings = self.settings
        where = (
            f"that the tor at {settings.tor_control} (STILLROOM_TOR_CONTROL) is connected"
            if settings.tor_control
            else "this machine's network connection and clock"
        )
        if self.stage == "start":
            waiting, check, limit = "tor to start", "the lines marked 'tor:' above", 0
        elif self.stage == "bootstrap":
            waiting = f"tor to bootstrap (last: {self.progress})"
            check = f"{where}, and the lines marked 'tor:' above"
            limit = settings.tor_bootstrap_timeout
        else:
            waiting = "tor to upload the onion service's descriptor"
            check = f"{where}, and the lines marked 'tor:' above"
            limit = settings.tor_publish_timeout
        setting = "TOR_BOOTSTRAP_TIMEOUT" if self.stage == "bootstrap" else "TOR_PUBLISH_TIMEOUT"
        gives_up = f"; serve gives up after STILLROOM_{setting} ({limit} s)" if limit else ""
        return (
            f"Still waiting for {waiting} after {seconds} s; both apps are serving meanwhile."
            f" Check {check}{gives_up}."
        )

    def keep_up(self) -> None:
        """Bring the service back at the same address whenever tor goes away; never returns."""
        delay = RETRY_FIRST_SECONDS
        while True:
            up_since = time.monotonic()
            self.lost.wait()
            if time.monotonic() - up_since >= RETRY_RESET_SECONDS:
                delay = RETRY_FIRST_SECONDS  # only a tor that dies again at once backs off
            delay = self.come_back(delay)

    def come_back(self, delay: int) -> int:
        """Try to publish again, pausing longer after each failure, until it works.

        :returns: the pause to start from should tor go away again soon.
        """
        self.drop()
        again = "reconnecting" if self.settings.tor_control else "starting it again"
        say(f"Tor went away; {again} in {delay} s")
        while True:
            time.sleep(delay)  # a greenlet sleep: SIGTERM and Ctrl-C end serve here too
            delay = min(2 * delay, RETRY_LAST_SECONDS)
            try:
                self.publish(waiting=False)
            except Exception as error:  # whatever tor did, serving goes on and so do the tries
                self.drop()
                reason = error if isinstance(error, TorError) else type(error).__name__
                say(f"Tor is not back yet; trying again in {delay} s: {reason}")
            else:
                return delay

    def drop(self) -> None:
        """Let go of a tor that went away or did not come up; tor removes the service itself."""
        if self.uploads is not None:
            self.uploads.close()
            self.uploads = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def stop(self) -> None:
        """Remove the service and stop our tor or leave the operator's, saying which."""
        if self.uploads is not None:
            self.uploads.close()
        if self.handle is not None:
            if self.address and not self.lost.is_set():
                service.unpublish(self.handle.controller, self.address)
                say("Onion service removed.")
            self.handle.close()
        elif self.address is None and self.stage == "start":
            return  # tor never came up: nothing to report
        if not self.settings.tor_control:
            say("Tor stopped.")
        elif self.handle is not None:
            say("Detached from tor; it keeps running.")
        else:
            say("Stopped waiting for tor.")


@main.group()
def onion() -> None:
    """Inspect the onion service and manage restricted discovery."""


@onion.command()
def status() -> None:
    """Show the address, tor's bootstrap, the descriptor and its proof-of-work state."""
    settings = load_settings()
    address = service.read_address(settings.data_dir)
    click.echo(f"address: {address or 'not published yet'}")
    serving = running_serve(settings.data_dir)
    if serving is not None and serving[1] == "no-tor":
        elsewhere = (
            f"; the tor that publishes {settings.onion_address} runs outside Stillroom"
            if settings.onion_address
            else ""
        )
        fail(
            RuntimeError(
                f"'stillroom serve' (PID {serving[0]}) runs without tor (--no-tor), so it"
                f" publishes no onion service{elsewhere}"
            )
        )
    control = settings.tor_control or str(settings.data_dir / "tor" / "control")
    if not settings.tor_control and not Path(control).exists():
        fail(RuntimeError("no tor is running for this data directory: is 'stillroom serve' up?"))
    try:
        handle = tor.attach(control, settings.tor_control_password or None)
    except TorError as error:
        fail(error)
    try:
        progress, summary = tor.bootstrap_status(handle.controller)
        click.echo(f"bootstrap: {progress}% {summary}")
        report = service.describe(handle.controller, address) if address else {}
        report["descriptor uploads"] = service.read_uploads(settings.data_dir)
        for key, value in report.items():
            click.echo(f"{key}: {value}")
    finally:
        handle.controller.close()


@onion.group(name="clients")
def onion_clients() -> None:
    """Restricted discovery: only holders of a client key can find the service."""


@onion_clients.command(name="add")
@click.argument("name")
def clients_add(name: str) -> None:
    """Authorise a new client NAME and print its key line once (restart serve to apply)."""
    settings = load_settings()
    address = service.read_address(settings.data_dir)
    if address is None:
        fail(RuntimeError("the onion service has no address yet: run 'stillroom serve' once"))
    try:
        line = clients.add_client(settings.data_dir, name, address)
    except clients.ClientNameError as error:
        fail(RuntimeError(f"bad or existing client name {error}: use a-z, 0-9 and '-'"))
    click.echo("Give this to the participant, once, by a safe channel; it is not kept.")
    click.echo(f"For Tor Browser's prompt (the key alone): {line.rsplit(':', 1)[1]}")
    click.echo(f"For tor's ClientOnionAuthDir (a .auth_private file): {line}")


@onion_clients.command(name="list")
def clients_list() -> None:
    """List the authorised clients by name."""
    for name in clients.list_clients(load_settings().data_dir):
        click.echo(name)


@onion_clients.command(name="remove")
@click.argument("name")
def clients_remove(name: str) -> None:
    """Remove client NAME (takes effect when serve restarts)."""
    try:
        removed = clients.remove_client(load_settings().data_dir, name)
    except clients.ClientNameError as error:
        fail(RuntimeError(f"bad client name {error}"))
    if not removed:
        fail(RuntimeError(f"no client named {name}"))
    click.echo(f"removed {name}; restart 'stillroom serve' to apply")


@main.command(epilog=SETTINGS_EPILOG)
def purge() -> None:
    """Delete now everything past its retention (serve also does it every minute).

    Keys go before the data they open, and the write-ahead log is truncated at the end.
    Running it twice in a row deletes nothing the second time.
    """
    settings = load_settings()
    started = time.monotonic()
    with open_database(settings) as database:
        removed = run_purge(database, int(time.time()), settings)
    say(f"Purged {removed} rows in {time.monotonic() - started:.2f} s.")


@main.command(epilog=SETTINGS_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def audit(as_json: bool) -> None:
    """Check the live data directory and settings against the published promises.

    Reads only; exits with status 1 when any check fails.
    """
    settings = load_settings()
    checks = run_audit(settings, int(time.time()))
    ok = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [check.as_dict() for check in checks]}))
    else:
        for check in checks:
            click.echo(f"{'ok    ' if check.ok else 'BREACH'}  {check.name}: {check.detail}")
        click.echo("All checks hold." if ok else "At least one promise is broken; see above.")
    sys.exit(0 if ok else 1)


@main.command("backup-key")
@click.argument("secret_file", type=click.Path(dir_okay=False, path_type=Path))
def backup_key(secret_file: Path) -> None:
    """Make the operator's backup key pair: the secret key goes to SECRET_FILE (0600).

    Keep that file offline (not on this server). Set the public key it prints as
    STILLROOM_BACKUP_PUBLIC_KEY.
    """
    public, secret = new_recipient_keypair()
    try:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(RuntimeError(f"{secret_file} exists; choose a new name"))
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(secret).decode() + "\n")
    say(f"Secret key written to {secret_file}: move it off this server and keep it safe.")
    say(f"STILLROOM_BACKUP_PUBLIC_KEY={base64.b64encode(public).decode()}")


@main.command(epilog=SETTINGS_EPILOG)
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
def backup(destination: Path) -> None:
    """Write a consistent backup, encrypted to STILLROOM_BACKUP_PUBLIC_KEY, to DESTINATION.

    Safe while the service runs. A backup keeps deleted conversations readable for as
    long as it lives: keep it no longer than MESSAGE_RETENTION_DAYS (docs/operating.md).
    """
    settings = load_settings()
    try:
        if not settings.backup_public_key:
            raise BackupError("set STILLROOM_BACKUP_PUBLIC_KEY (see 'stillroom backup-key')")
        key = decode_key(settings.backup_public_key, "STILLROOM_BACKUP_PUBLIC_KEY")
        if not settings.database_path.exists():
            raise BackupError(f"no database in {settings.data_dir}")
        size = write_backup(settings, destination, key)
    except BackupError as error:
        fail(error)
    except OSError as error:  # a read-only data directory holds no temporary copy, say
        fail(unwritable_path(error, Path(error.filename or settings.data_dir)) or error)
    say(f"Backup written to {destination} ({size} bytes), encrypted to the operator's key.")


@main.command(epilog=SETTINGS_EPILOG)
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secret-key",
    "secret_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The file 'stillroom backup-key' wrote.",
)
def restore(backup_file: Path, secret_file: Path) -> None:
    """Restore BACKUP_FILE into an empty data directory, then purge what has expired since."""
    settings = load_settings(data_dir_must_exist=False)
    try:
        secret = decode_key(secret_file.read_text(), str(secret_file))
        removed = restore_backup(settings, backup_file, secret)
    except BackupError as error:
        fail(error)
    say(f"Restored into {settings.data_dir}; purged {removed} rows that had expired since.")


@main.group()
def participant() -> None:
    """Look after participants' accounts (known only by a therapist's pseudonym)."""


@participant.command(name="unblock")
@click.argument("therapist_name")
@click.argument("pseudonym")
def participant_unblock(therapist_name: str, pseudonym: str) -> None:
    """Let the participant whom THERAPIST_NAME blocked as PSEUDONYM book again."""
    with open_database(load_settings()) as database:
        try:
            found = therapists.find_by_name(database, therapist_name)
        except therapists.UnknownTherapistError:
            fail(RuntimeError(f"no therapist named {therapist_name!r}"))
        if not booking.unblock_participant(database, found.id, pseudonym):
            fail(RuntimeError(f"{therapist_name} knows no participant as {pseudonym!r}"))
    click.echo(f"The participant {therapist_name} knows as {pseudonym} can book again.")


main.add_command(therapist)
main.add_command(researcher)
main.add_command(study)
main.add_command(snippets)
