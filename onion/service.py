"""Publish the participant app as a v3 onion service with ``ADD_ONION``.

The service key lives in Stillroom's data directory (0600) and is handed to tor
over the control connection, so the address stays the same across restarts and
an operator's tor never needs to read our files. Stem has no parameters for tor's
proof-of-work defences, so the ``ADD_ONION`` command is written here.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import stem
import stem.control
from stem.descriptor.hidden_service import HiddenServiceDescriptorV3
from stem.response.events import HSDescEvent

from stillroom.onion.errors import OnionKeyError, PublishTimeoutError, TorRefusedError

KEY_FILE = "onion.key"
ADDRESS_FILE = "onion.hostname"


@dataclass(frozen=True)
class Defences:
    """What protects the service from floods.

    :param pow_queue_rate: introductions per second tor lets through once PoW is needed.
    :param pow_queue_burst: introductions tor queues before dropping the cheapest.
    :param max_streams: streams allowed per rendezvous circuit; a circuit that asks
        for more is closed, which stops one client hogging the app.
    """

    pow_queue_rate: int = 250
    pow_queue_burst: int = 2500
    max_streams: int = 20


def read_key(data_dir: Path) -> str | None:
    """Return the stored service key (``ED25519-V3:…``), or ``None`` before the first run.

    :raises OnionKeyError: when the file exists but holds no usable key.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        return None
    path.chmod(0o600)  # a key restored from a backup may come back too open
    key = path.read_text(encoding="ascii", errors="replace").strip()
    if not key.startswith("ED25519-V3:") or len(key) != len("ED25519-V3:") + 88:
        raise OnionKeyError(str(path))
    return key


def read_address(data_dir: Path) -> str | None:
    """Return the service's .onion address as recorded at its first publication."""
    path = data_dir / ADDRESS_FILE
    return path.read_text(encoding="ascii").strip() if path.exists() else None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` durably to a file only the owner can read, replacing it atomically."""
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def add_onion_command(
    key: str | None, target_port: int, defences: Defences, client_keys: list[str]
) -> str:
    """Return the ``ADD_ONION`` command for the participant app.

    The service is not detached: it belongs to Stillroom's control connection, so
    tor removes it by itself when Stillroom stops or dies, even on an operator's
    tor. ``MaxStreamsCloseCircuit`` closes a circuit that exceeds ``MaxStreams``;
    ``V3Auth`` with ``ClientAuthV3`` restricts discovery to clients holding a key.
    """
    flags = ["MaxStreamsCloseCircuit"]
    if client_keys:
        flags.append("V3Auth")
    parts = [
        "ADD_ONION",
        key or "NEW:ED25519-V3",
        "Flags=" + ",".join(flags),
        f"MaxStreams={defences.max_streams}",
        "PoWDefensesEnabled=1",
        f"PoWQueueRate={defences.pow_queue_rate}",
        f"PoWQueueBurst={defences.pow_queue_burst}",
        f"Port=80,127.0.0.1:{target_port}",
        *(f"ClientAuthV3={public}" for public in client_keys),
    ]
    return " ".join(parts)


def publish(
    controller: stem.control.Controller,
    data_dir: Path,
    target_port: int,
    defences: Defences,
    client_keys: list[str],
    timeout: int | None,
) -> str:
    """Publish the service and wait until tor has uploaded its descriptor once.

    :param timeout: seconds to wait for the upload; ``None`` returns at once (a tor
        without network builds no descriptor).
    :returns: the .onion address.
    :raises TorRefusedError: when tor rejects the command.
    :raises PublishTimeoutError: when no descriptor upload succeeds within ``timeout``.
    """
    key = read_key(data_dir)
    known = read_address(data_dir)
    if known:
        unpublish(controller, known)  # left behind by a run that was killed
    uploaded = threading.Event()
    service_id: list[str] = []

    def on_descriptor(event: HSDescEvent) -> None:
        if event.action == stem.HSDescAction.UPLOADED and event.address in service_id:
            uploaded.set()

    controller.add_event_listener(on_descriptor, stem.control.EventType.HS_DESC)
    try:
        answer = controller.msg(add_onion_command(key, target_port, defences, client_keys))
        if not answer.is_ok():
            raise TorRefusedError("ADD_ONION", str(answer))
        fields = dict(line.split("=", 1) for line in str(answer).splitlines() if "=" in line)
        service_id.append(fields["ServiceID"])
        if key is None:
            _write_private(data_dir / KEY_FILE, fields["PrivateKey"])
            read_key(data_dir)  # what was written must read back
        _write_private(data_dir / ADDRESS_FILE, f"{fields['ServiceID']}.onion")
        if timeout is not None and not uploaded.wait(timeout):
            raise PublishTimeoutError(timeout)
    finally:
        controller.remove_event_listener(on_descriptor)
    return f"{service_id[0]}.onion"


def unpublish(controller: stem.control.Controller, address: str) -> None:
    """Remove the service from tor; a tor that is already gone is not an error."""
    with contextlib.suppress(stem.ControllerError, stem.SocketError):
        controller.msg(f"DEL_ONION {address.removesuffix('.onion')}")


def published_services(controller: stem.control.Controller) -> set[str]:
    """Return the addresses of the services this control connection has published."""
    try:
        listing = controller.get_info("onions/current")
    except stem.ControllerError:
        return set()
    return {f"{line.strip()}.onion" for line in listing.splitlines() if line.strip()}


def describe(controller: stem.control.Controller, address: str) -> dict[str, str]:
    """Read back what tor publishes for ``address``: descriptor and proof-of-work.

    The proof-of-work parameters are read from the descriptor tor built, decrypted
    with the address as anyone on the network would, so the report shows what
    clients really see. With restricted discovery the inner layer is encrypted to
    the clients, and the report says so instead.
    """
    service_id = address.removesuffix(".onion")
    try:
        text = controller.get_info(f"hs/service/desc/id/{service_id}")
    except stem.ControllerError:
        return {
            "published": "no (is 'stillroom serve' running and done bootstrapping?)",
        }
    descriptor = HiddenServiceDescriptorV3.from_str(text)
    report = {"published": "yes", "descriptor": f"revision {descriptor.revision_counter}"}
    try:
        inner = descriptor.decrypt(address)
    except (ValueError, stem.DescriptorUnavailable):
        report["pow"] = "unknown (descriptor encrypted for authorised clients only)"
        return report
    report["introduction points"] = str(len(inner.introduction_points))
    pow_lines = [line for line in str(inner).splitlines() if line.startswith("pow-params ")]
    report["pow"] = f"on ({pow_lines[0]})" if pow_lines else "off"
    return report


STATUS_FILE = "onion.status"


class UploadLog:
    """Counts the descriptor uploads tor reports for our service while serving.

    ``stillroom onion status`` runs in another process and cannot see past events,
    so the count, the minute tor was connected and the minute of the last upload go
    to a small file (0600). It says nothing about participants: only that the service
    keeps being announced. Attach it before publishing, so the first uploads are
    counted too. Each tor (a restarted one too) gets a new log, counting from zero.
    """

    def __init__(self, controller: stem.control.Controller, data_dir: Path) -> None:
        self.path = data_dir / STATUS_FILE
        self.path.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._uploads: list[str] = []
        self._service_id: str | None = None
        self._since = _minute()
        controller.add_event_listener(self._on_descriptor, stem.control.EventType.HS_DESC)

    def close(self) -> None:
        """Forget the count when serving stops, so status never shows a stale one."""
        self.path.unlink(missing_ok=True)

    def track(self, address: str) -> None:
        """Count from now on (and retroactively) the uploads of ``address``."""
        with self._lock:
            self._service_id = address.removesuffix(".onion")
            self._write()

    def _on_descriptor(self, event: HSDescEvent) -> None:
        if event.action == stem.HSDescAction.UPLOADED:
            with self._lock:
                self._uploads.append(event.address)
                self._write()

    def _write(self) -> None:
        count = self._uploads.count(self._service_id) if self._service_id else 0
        if count:
            _write_private(self.path, f"{count}\n{self._since}\n{_minute()}")


def _minute() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def read_uploads(data_dir: Path) -> str:
    """Return the upload count, since when it counts and the last upload's minute."""
    path = data_dir / STATUS_FILE
    if not path.exists():
        return "none yet since serve last connected to tor"
    try:
        count, since, last = path.read_text(encoding="ascii").splitlines()
    except ValueError:  # written by an older version of serve, still running
        return "unknown until serve is restarted"
    return f"{count} to directory servers since serve connected to tor at {since} (last {last})"
