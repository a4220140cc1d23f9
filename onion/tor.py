"""Start a private tor, or attach to the operator's, and watch it bootstrap.

A launched tor runs with its own DataDirectory inside Stillroom's data directory,
a ControlSocket with cookie authentication, no SocksPort (the service needs no
client port) and ``SafeLogging 1``. Stem keeps one controller open for tor's whole
life: with ``take_ownership`` tor exits when that controller closes or this process
dies, so no orphaned tor is ever left behind.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import stem
import stem.connection
import stem.control
import stem.process
import stem.version

from stillroom.onion.errors import (
    BootstrapTimeoutError,
    ControlAuthError,
    ControlUnreachableError,
    TorConfigError,
    TorLostError,
    TorMissingError,
    TorStartError,
    TorTooOldError,
)

#: The first tor that accepts the proof-of-work options on ADD_ONION.
MINIMUM_VERSION = stem.version.Version("0.4.9.2")

#: Options every launched tor gets; extra lines from the operator come on top.
BASE_CONFIG = {
    "SocksPort": "0",
    "SafeLogging": "1",
    "CookieAuthentication": "1",
    "AvoidDiskWrites": "1",
    "Log": "NOTICE stdout",
}

#: Options the extra torrc lines may not set: they would weaken the service or take
#: the control connection away from Stillroom.
PROTECTED = {
    "socksport",
    "safelogging",
    "log",
    "datadirectory",
    "controlsocket",
    "controlport",
    "cookieauthentication",
    "hashedcontrolpassword",
    "hiddenservicesinglehopmode",
    "hiddenservicenonanonymousmode",
    "__owningcontrollerprocess",
}

Progress = Callable[[str], None]


def find_tor() -> str:
    """Return the path of the tor binary, checking that it is new enough.

    :raises TorMissingError: when tor is not installed.
    :raises TorTooOldError: when it predates :data:`MINIMUM_VERSION`.
    """
    path = shutil.which("tor") or shutil.which("tor", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise TorMissingError
    check_version(stem.version.get_system_tor_version(path))
    return path


def check_version(version: stem.version.Version) -> None:
    """Refuse a tor older than :data:`MINIMUM_VERSION`."""
    if version < MINIMUM_VERSION:
        raise TorTooOldError(str(version), str(MINIMUM_VERSION))


def read_extra_config(path: Path | None) -> dict[str, list[str]]:
    """Parse a file of extra torrc lines (``Key value``; ``#`` starts a comment).

    :raises TorConfigError: when the file cannot be read or sets a protected option.
    """
    options: dict[str, list[str]] = {}
    if path is None:
        return options
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise TorConfigError(f"cannot read {path}: {error.__class__.__name__}") from error
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(None, 1)
        if parts:
            key, value = parts[0], parts[1].strip() if len(parts) > 1 else ""
            if _protected(key):
                raise TorConfigError(f"{path} sets {key}")
            options.setdefault(key, []).append(value)
    return options


def _protected(key: str) -> bool:
    """Whether ``key`` names a protected option, however tor would spell it.

    Tor ignores case, accepts hidden ``__`` variants of its ports, and takes a
    prefix of an option's name (``cookieauth``) for the option itself.
    """
    name = key.lower().lstrip("_")
    return any(name.startswith(option) or option.startswith(name) for option in PROTECTED)


@dataclass
class Tor:
    """A controller for tor and, when we launched it, tor's process."""

    controller: stem.control.Controller
    process: subprocess.Popen[bytes] | None = None
    closing: bool = False

    @property
    def launched(self) -> bool:
        """Whether this tor is ours (it stops with us) rather than the operator's."""
        return self.process is not None

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call ``on_lost`` (from stem's thread) if tor goes away before :meth:`close`.

        A tor that is gone already is reported at once, since stem only reports the
        moment the connection closes; ``on_lost`` may therefore run twice.
        """

        def listener(_controller: object, state: stem.control.State, _when: float) -> None:
            if state == stem.control.State.CLOSED and not self.closing:
                on_lost()

        self.controller.add_status_listener(listener)
        if not self.controller.is_alive() and not self.closing:
            on_lost()

    def close(self) -> None:
        """Close the controller; a tor we launched exits with it, and we wait for that."""
        self.closing = True
        self.controller.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(
    data_dir: Path,
    extra_config: Path | None,
    report: Progress = lambda _line: None,
    startup_timeout: int = 90,
) -> Tor:
    """Start a private tor under ``data_dir/tor``, owned by this process.

    Tor's warnings and errors go to ``report`` while it runs.

    :raises TorMissingError: when tor is not installed.
    :raises TorTooOldError: when tor is too old.
    :raises TorConfigError: when the extra lines are unusable.
    :raises TorStartError: when tor exits while starting (it refused an option, say), or
        its control socket does not answer.
    """
    tor = find_tor()
    tor_dir = data_dir.resolve() / "tor"  # tor needs absolute paths for its sockets
    tor_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tor_dir.chmod(0o700)
    control = tor_dir / "control"
    config: dict[str, str | list[str]] = {
        **BASE_CONFIG,
        "DataDirectory": str(tor_dir),
        "ControlSocket": str(control),
    }
    for key, values in read_extra_config(extra_config).items():
        config[key] = values if len(values) > 1 else values[0]
    try:
        process = stem.process.launch_tor_with_config(
            config=config,
            tor_cmd=tor,
            completion_percent=0,
            timeout=startup_timeout,
            take_ownership=True,
            close_output=False,
        )
    except OSError as error:  # stem reports tor's own complaint this way
        raise TorStartError(str(error)) from error
    _forward_warnings(process, report)
    try:
        controller = stem.control.Controller.from_socket_file(str(control))
        controller.authenticate()
    except BaseException as error:
        process.kill()  # never leave a tor behind that holds the data directory's lock
        process.wait()
        if isinstance(error, (stem.SocketError, stem.connection.AuthenticationFailure)):
            raise TorStartError(f"its control socket did not answer: {error}") from error
        raise
    handle = Tor(controller, process)
    try:
        check_launched_config(controller)
    except BaseException:
        handle.close()
        raise
    return handle


def _forward_warnings(process: subprocess.Popen[bytes], report: Progress) -> None:
    """Pass tor's warnings and errors on to the operator; drop routine notices.

    Reading tor's output to the end also keeps tor from blocking on a full pipe.
    """

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if "[warn]" in line or "[err]" in line:
                report(f"tor: {line.split('] ', 1)[-1]}")
        process.stdout.close()

    threading.Thread(target=pump, name="tor-output", daemon=True).start()
    if process.stderr is not None:
        process.stderr.close()


def check_launched_config(controller: stem.control.Controller) -> None:
    """Confirm from tor itself: no client or control port, and cookie authentication.

    :raises TorConfigError: when that is not so, whatever spelling caused it.
    """
    for option in ("SocksPort", "__SocksPort", "ControlPort", "__ControlPort"):
        if controller.get_conf(option, None) not in (None, "", "0"):
            raise TorConfigError(f"{option} is set")
    if controller.get_conf("CookieAuthentication") != "1":
        raise TorConfigError("CookieAuthentication is off")


def check_hardening(handle: Tor) -> None:
    """Refuse a tor that would log addresses or run services without anonymity.

    :raises TorConfigError: when ``SafeLogging`` is off or non-anonymous mode is on.
    """
    attached = not handle.launched
    if handle.controller.get_conf("SafeLogging") != "1":
        raise TorConfigError("SafeLogging is not 1", attached)
    if handle.controller.get_conf("HiddenServiceNonAnonymousMode") != "0":
        raise TorConfigError("HiddenServiceNonAnonymousMode is on", attached)


def attach(target: str, password: str | None) -> Tor:
    """Connect to a running tor's control port (``HOST:PORT``) or socket (a path).

    :raises ControlUnreachableError: when nothing answers there.
    :raises ControlAuthError: when tor refuses the password or cookie.
    :raises TorTooOldError: when that tor is too old.
    """
    try:
        if ":" in target and not target.startswith("/"):
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            # Probe first: stem leaks its socket when the connection is refused.
            socket.create_connection((host, int(port)), timeout=10).close()
            controller = stem.control.Controller.from_port(address=host, port=int(port))
        else:
            controller = stem.control.Controller.from_socket_file(target)
    except (OSError, stem.SocketError, ValueError) as error:
        raise ControlUnreachableError(target, str(error) or type(error).__name__) from error
    try:
        controller.authenticate(password=password)
    except stem.connection.AuthenticationFailure as error:
        controller.close()
        raise ControlAuthError(target, str(error) or type(error).__name__) from error
    check_version(controller.get_version())
    return Tor(controller)


def bootstrap_status(controller: stem.control.Controller) -> tuple[int, str]:
    """Return tor's bootstrap progress in percent and its summary."""
    phase = controller.get_info("status/bootstrap-phase")
    progress = int(phase.split("PROGRESS=", 1)[1].split()[0])
    summary = phase.split('SUMMARY="', 1)[1].split('"', 1)[0] if 'SUMMARY="' in phase else ""
    return progress, summary


def wait_for_bootstrap(
    controller: stem.control.Controller, timeout: int, progress: Progress
) -> None:
    """Report bootstrap progress as it changes until tor reaches 100 %.

    :raises BootstrapTimeoutError: when tor is not done within ``timeout`` seconds.
    :raises TorLostError: when tor goes away meanwhile.
    """
    deadline = time.monotonic() + timeout
    last = (-1, "")
    while time.monotonic() < deadline:
        try:
            current = bootstrap_status(controller)
        except (stem.SocketClosed, stem.ControllerError) as error:
            raise TorLostError from error
        if current != last:
            progress(f"tor bootstrap {current[0]}%: {current[1]}")
            last = current
        if current[0] >= 100:
            return
        time.sleep(0.25)
    raise BootstrapTimeoutError(timeout, f"{last[0]}% {last[1]}")
