"""The onion service with a real tor, offline (``DisableNetwork 1``)."""

from __future__ import annotations

import base64
import http.client
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nacl.public
import pytest
import stem.process
import stem.version

from stillroom.onion import clients, service, tor
from stillroom.onion.errors import (
    BootstrapTimeoutError,
    ControlAuthError,
    ControlUnreachableError,
    TorMissingError,
    TorRefusedError,
    TorTooOldError,
)

from support import free_port, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
DEFENCES = service.Defences(pow_queue_rate=50, pow_queue_burst=400, max_streams=10)
PUBLISHED = re.compile(r"Onion service published: http://([a-z2-7]{56}\.onion)/")


@pytest.fixture(scope="module", autouse=True)
def tor_is_installed() -> None:
    if shutil.which("tor") is None and not Path("/usr/sbin/tor").exists():
        pytest.fail("tor is missing: install Debian's tor (the README's test command does)")


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    config = tmp_path / "offline.torrc"
    config.write_text("DisableNetwork 1\n")
    return config


@pytest.fixture
def launched(tmp_path: Path, offline: Path) -> Iterator[tor.Tor]:
    handle = tor.launch(tmp_path / "data", offline)
    yield handle
    handle.close()


def test_launched_tor_is_private_and_hardened(launched: tor.Tor, tmp_path: Path):
    controller = launched.controller
    assert controller.get_conf("SafeLogging") == "1"
    assert controller.get_conf("SocksPort") == "0"
    assert controller.get_conf("HiddenServiceSingleHopMode") == "0"
    assert controller.get_conf("DataDirectory") == str(tmp_path / "data" / "tor")
    assert (tmp_path / "data" / "tor").stat().st_mode & 0o777 == 0o700
    assert launched.process is not None and launched.process.poll() is None


def test_tor_exits_with_its_owner(tmp_path: Path, offline: Path):
    handle = tor.launch(tmp_path / "data", offline)
    started = time.monotonic()
    handle.close()
    assert time.monotonic() - started < 10, "tor left on its own, it was not killed"
    assert handle.process is not None and handle.process.returncode == 0


def test_address_survives_a_restart(tmp_path: Path, offline: Path):
    data_dir = tmp_path / "data"
    first = tor.launch(data_dir, offline)
    try:
        address = service.publish(first.controller, data_dir, 8080, DEFENCES, [], None)
        assert address in service.published_services(first.controller)
    finally:
        first.close()
    key = data_dir / service.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("ED25519-V3:")
    second = tor.launch(data_dir, offline)
    try:
        again = service.publish(second.controller, data_dir, 8080, DEFENCES, [], None)
    finally:
        second.close()
    assert again == address
    assert len(address) == len("x" * 56 + ".onion")


def test_republish_replaces_a_service_left_behind(launched: tor.Tor, tmp_path: Path):
    data_dir = tmp_path / "data"
    address = service.publish(launched.controller, data_dir, 8080, DEFENCES, [], None)
    again = service.publish(launched.controller, data_dir, 8080, DEFENCES, [], None)
    assert again == address
    service.unpublish(launched.controller, address)
    assert address not in service.published_services(launched.controller)


def test_pow_options_are_sent_and_checked_by_tor(launched: tor.Tor, tmp_path: Path):
    command = service.add_onion_command(None, 8080, DEFENCES, [])
    assert "PoWDefensesEnabled=1" in command
    assert "PoWQueueRate=50" in command and "PoWQueueBurst=400" in command
    assert "MaxStreams=10" in command and "MaxStreamsCloseCircuit" in command
    assert launched.controller.msg(command).is_ok()
    bad = service.Defences(pow_queue_rate=-5)
    with pytest.raises(TorRefusedError):
        service.publish(launched.controller, tmp_path / "other", 8080, bad, [], None)


def test_client_authorisation_keys(launched: tor.Tor, tmp_path: Path):
    data_dir = tmp_path / "data"
    address = service.publish(launched.controller, data_dir, 8080, DEFENCES, [], None)
    line = clients.add_client(data_dir, "pilot-1", address)
    assert line.startswith(address.removesuffix(".onion") + ":descriptor:x25519:")
    private_key = line.rsplit(":", 1)[1]
    raw_private = base64.b32decode(private_key + "=" * (-len(private_key) % 8))
    [public_key] = clients.client_public_keys(data_dir)
    derived = bytes(nacl.public.PrivateKey(raw_private).public_key)
    assert base64.b32encode(derived).decode().rstrip("=") == public_key, "a matching pair"
    assert private_key not in "".join(p.read_text() for p in (data_dir / "onion-clients").iterdir())
    assert clients.list_clients(data_dir) == ["pilot-1"]
    keys = clients.client_public_keys(data_dir)
    restricted = service.publish(launched.controller, data_dir, 8080, DEFENCES, keys, None)
    assert restricted == address
    # A client tor accepts the printed private key (base32 in .auth_private files,
    # base64 on the control port) for that address.
    answer = launched.controller.msg(
        f"ONION_CLIENT_AUTH_ADD {address.removesuffix('.onion')}"
        f" x25519:{base64.b64encode(raw_private).decode()}"
    )
    assert answer.is_ok(), str(answer)
    with pytest.raises(clients.ClientNameError):
        clients.add_client(data_dir, "pilot-1", address)
    with pytest.raises(clients.ClientNameError):
        clients.add_client(data_dir, "../escape", address)
    assert clients.remove_client(data_dir, "pilot-1")
    assert clients.list_clients(data_dir) == []


def test_bootstrap_timeout_is_reported(launched: tor.Tor):
    with pytest.raises(BootstrapTimeoutError, match="STILLROOM_TOR_BOOTSTRAP_TIMEOUT"):
        tor.wait_for_bootstrap(launched.controller, 1, lambda _: None)


@pytest.fixture(scope="module")
def password_tor(tmp_path_factory) -> Iterator[str]:
    """A tor that accepts only a control password (no cookie), on a loopback port."""
    data = tmp_path_factory.mktemp("pwtor")
    data.chmod(0o700)
    tor_binary = tor.find_tor()
    hashed = (
        subprocess.run(
            [tor_binary, "--quiet", "--hash-password", "right horse"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = stem.process.launch_tor_with_config(
        config={
            "DataDirectory": str(data),
            "ControlPort": f"127.0.0.1:{port}",
            "HashedControlPassword": hashed,
            "DisableNetwork": "1",
            "SocksPort": "0",
            "Log": "notice stdout",
        },
        tor_cmd=tor_binary,
        completion_percent=0,
    )
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def test_wrong_control_password_is_refused(password_tor: str):
    with pytest.raises(ControlAuthError, match="STILLROOM_TOR_CONTROL_PASSWORD"):
        tor.attach(password_tor, "wrong horse")
    right = tor.attach(password_tor, "right horse")
    right.controller.close()


def test_unreachable_control_port_is_reported(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ControlUnreachableError, match="STILLROOM_TOR_CONTROL"):
        tor.attach(f"127.0.0.1:{port}", None)


def test_missing_and_old_tor_are_explained(monkeypatch):
    assert "0.4.9" in str(tor.MINIMUM_VERSION)
    with pytest.raises(TorTooOldError, match=r"0\.4\.9\.2"):
        tor.check_version(stem.version.Version("0.4.8.12"))
    monkeypatch.setattr(tor.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(TorMissingError, match="apt-get install tor"):
        tor.find_tor()


def run_serve(env: dict[str, str], timeout: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, "serve"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONSAFEPATH": "1", **env},
    )


def test_serve_exits_non_zero_with_the_fix_when_tor_cannot_bootstrap(tmp_path, offline):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_serve(
        {
            "STILLROOM_DATA_DIR": str(tmp_path / "data"),
            "STILLROOM_PARTICIPANT_PORT": str(port),
            "STILLROOM_TOR_EXTRA_CONFIG": str(offline),
            "STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "2",
        }
    )
    assert result.returncode == 1
    assert "tor bootstrap 0%" in result.stdout, "progress is shown as it goes"
    assert "did not finish bootstrapping" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["STILLROOM_PARTICIPANT_PORT", "STILLROOM_PORTAL_PORT"])
def test_serve_refuses_a_port_in_use_and_names_its_setting(tmp_path, setting):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        free = {"STILLROOM_PARTICIPANT_PORT": "0", "STILLROOM_PORTAL_PORT": "0"}
        result = run_serve(
            {"STILLROOM_DATA_DIR": str(tmp_path / "data"), **free, setting: str(port)}
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: port {port} on 127.0.0.1 is already in use: stop the program that holds it"
        f" (see 'ss -ltnp'), or set {setting} to a free port.\n"
    )


def test_both_apps_answer_while_tor_cannot_bootstrap(tmp_path, offline):
    """A tor without network never bootstraps: the portal and the app serve meanwhile."""
    port = free_port()
    process = subprocess.Popen(
        [STILLROOM, "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=stillroom_env(
            tmp_path / "data",
            port,
            {"STILLROOM_TOR_EXTRA_CONFIG": str(offline), "STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "60"},
        ),
    )
    output = Output(process)
    try:
        portal = output.expect(re.compile(r"Therapist portal: (http://127\.0\.0\.1:\d+)/"), 30)
        output.expect(re.compile(r"tor bootstrap 0%"), 30)
        with urllib.request.urlopen(f"{portal.group(1)}/en/login", timeout=10) as page:
            assert page.status == 200
        assert local_status(port, "/en/") == 200
        waiting = output.expect(re.compile(r"^Still waiting for tor to bootstrap .*"), 40)
        assert "both apps are serving meanwhile" in waiting.group(0)
        assert "network connection and clock" in waiting.group(0)
        assert "STILLROOM_TOR_BOOTSTRAP_TIMEOUT (60 s)" in waiting.group(0)
        assert "Onion service published" not in output.text()
        assert local_status(port, "/en/") == 200, "still serving after the waiting line"
        process.send_signal(signal.SIGINT)  # Ctrl-C while waiting is a clean stop
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text()
    assert code == 0, text
    assert "Tor stopped." in text and "Traceback" not in text, text


def test_serve_explains_refused_control_authentication(tmp_path, password_tor: str):
    result = run_serve(
        {
            "STILLROOM_DATA_DIR": str(tmp_path / "app"),
            "STILLROOM_PARTICIPANT_PORT": "0",
            "STILLROOM_TOR_CONTROL": password_tor,
            "STILLROOM_TOR_CONTROL_PASSWORD": "wrong horse",
        }
    )
    assert result.returncode == 1
    assert "refused authentication" in result.stderr
    assert "Traceback" not in result.stderr


def test_torrc_example_is_valid(tmp_path):
    example = Path(__file__).resolve().parent.parent / "torrc.example"
    text = example.read_text()
    active = {line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")}
    for option in (
        "HiddenServicePoWDefensesEnabled 1",
        "HiddenServiceEnableIntroDoSDefense 1",
        "HiddenServiceMaxStreamsCloseCircuit 1",
        "SafeLogging 1",
        "SocksPort 0",
    ):
        assert option in active, option
    assert not any("SingleHop" in line or "NonAnonymous" in line for line in active)
    hs_dir = tmp_path / "hs"
    hs_dir.mkdir(mode=0o700)
    config = tmp_path / "torrc"
    config.write_text(
        text.replace("/var/lib/tor/stillroom", str(hs_dir)).replace(
            "DataDirectory /var/lib/tor", f"DataDirectory {tmp_path / 'data'}"
        )
    )
    tor_binary = shutil.which("tor") or "/usr/sbin/tor"
    result = subprocess.run(
        [tor_binary, "--verify-config", "-f", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "line",
    [
        "SafeLogging 0",
        "SocksPort 9050",
        "Log debug stdout",
        "l debug stdout",
        "__SocksPort 9050",
        "ControlPort\t9051",
        "cookieauth 0",
    ],
)
def test_extra_config_cannot_weaken_the_launched_tor(tmp_path, line):
    config = tmp_path / "extra.torrc"
    config.write_text(f"DisableNetwork 1\n{line}\n")
    result = run_serve(
        {
            "STILLROOM_DATA_DIR": str(tmp_path / "data"),
            "STILLROOM_PARTICIPANT_PORT": "0",
            "STILLROOM_TOR_EXTRA_CONFIG": str(config),
        }
    )
    assert result.returncode == 1
    assert f"sets {line.split()[0]}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Starting a private tor" in result.stdout and "bootstrap" not in result.stdout


@pytest.mark.parametrize("problem", ["missing", "invalid"])
def test_unusable_extra_config_is_explained(tmp_path, problem):
    config = tmp_path / "extra.torrc"
    if problem == "invalid":
        config.write_text("DisableNetwork 1\nNoSuchTorOption 1\n")
    result = run_serve(
        {
            "STILLROOM_DATA_DIR": str(tmp_path / "data"),
            "STILLROOM_PARTICIPANT_PORT": "0",
            "STILLROOM_TOR_EXTRA_CONFIG": str(config),
        }
    )
    assert result.returncode == 1
    assert "STILLROOM_TOR_EXTRA_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr
    if problem == "invalid":
        assert "tor could not start" in result.stderr and "NoSuchTorOption" in result.stderr


def launch_operator_tor(
    control: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start an operator's own tor, offline, with its control socket at ``control``."""
    control.parent.mkdir(mode=0o700)
    return stem.process.launch_tor_with_config(
        config={
            "DataDirectory": str(control.parent),
            "ControlSocket": str(control),
            "CookieAuthentication": "1",
            "DisableNetwork": "1",
            "SocksPort": "0",
            "Log": "NOTICE stdout",
            **(extra or {}),
        },
        tor_cmd=tor.find_tor(),
        completion_percent=0,
    )


def test_an_attached_tor_without_safe_logging_is_refused(tmp_path):
    control = tmp_path / "unsafe" / "control"
    process = launch_operator_tor(control, {"SafeLogging": "0"})
    try:
        result = run_serve(
            {
                "STILLROOM_DATA_DIR": str(tmp_path / "app"),
                "STILLROOM_PARTICIPANT_PORT": "0",
                "STILLROOM_TOR_CONTROL": str(control),
            }
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result.returncode == 1
    assert "SafeLogging is not 1" in result.stderr
    # The operator is sent to the torrc that applies, not to a setting serve did not use.
    assert "STILLROOM_TOR_CONTROL names" in result.stderr
    assert "STILLROOM_TOR_EXTRA_CONFIG" not in result.stderr


class Output:
    """What a running ``stillroom serve`` prints, read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.process.stdout.close()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """Return the next line matching ``pattern`` within ``timeout`` seconds, or ``None``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if not self.pump.is_alive() and self.lines.empty():
                    break  # serve has exited and all it printed has been read
                continue
            self.seen.append(line)
            if match := pattern.search(line):
                return match
        return None

    def expect(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Like :meth:`wait_for`, but a missing line fails the test with the output so far."""
        match = self.wait_for(pattern, timeout)
        assert match is not None, f"serve never printed {pattern.pattern}:\n{self.text()}"
        return match

    def text(self) -> str:
        """Return everything read so far, or all of it once serve has exited."""
        if self.process.poll() is not None:
            self.pump.join(timeout=10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def child_pids(pid: int) -> list[int]:
    """Return the processes ``pid`` started: serve's own tor."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def status_of(connection: http.client.HTTPConnection, path: str) -> int:
    """GET ``path`` on an open connection and return the status, keeping the connection."""
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


def local_status(port: int, path: str) -> int:
    """Ask the participant app on a new connection, as the onion service's target."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return status_of(connection, path)
    finally:
        connection.close()


def serve_without_waiting(
    data_dir: Path, port: int, extra: dict[str, str]
) -> subprocess.Popen[str]:
    """Start ``stillroom serve`` publishing at once: a tor without network never bootstraps."""
    env = {"STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "0", "STILLROOM_TOR_PUBLISH_TIMEOUT": "0"}
    return subprocess.Popen(
        [STILLROOM, "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=stillroom_env(data_dir, port, {**env, **extra}),
    )


def test_serve_keeps_serving_and_brings_its_tor_back_at_the_same_address(tmp_path, offline):
    """Tor dies under a running serve: the app never stops answering, the onion comes back."""
    port = free_port()
    process = serve_without_waiting(
        tmp_path / "data", port, {"STILLROOM_TOR_EXTRA_CONFIG": str(offline)}
    )
    output = Output(process)
    try:
        address = output.expect(PUBLISHED, 60).group(1)
        [first_tor] = child_pids(process.pid)
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert status_of(kept, "/en/") == 200
        os.kill(first_tor, signal.SIGKILL)
        output.expect(re.compile(r"Tor went away; starting it again in \d+ s"), 30)
        answered = 0
        deadline = time.monotonic() + 60
        while (again := output.wait_for(PUBLISHED, 0.1)) is None:
            assert time.monotonic() < deadline, f"tor never came back:\n{output.text()}"
            assert status_of(kept, "/en/") == 200, "an open connection outlives tor"
            assert local_status(port, "/en/") == 200, "new connections are served meanwhile"
            answered += 1
        assert answered, "the app was asked while tor was away"
        assert again.group(1) == address, "the address never changes"
        [second_tor] = child_pids(process.pid)
        assert second_tor != first_tor, "a new tor, and the dead one reaped"
        assert status_of(kept, "/en/") == 200
        kept.close()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text()
    assert code == 0, text
    assert "Onion service removed." in text and "Tor stopped." in text
    assert "Traceback" not in text
    assert not Path(f"/proc/{second_tor}").exists(), "tor stopped with serve"


def test_sigterm_stops_serve_cleanly_while_it_waits_for_the_operators_tor(tmp_path):
    """The attached tor is down and serve keeps trying: SIGTERM still ends it at once, cleanly."""
    control = tmp_path / "operator" / "control"
    operator = launch_operator_tor(control)
    port = free_port()
    process = serve_without_waiting(
        tmp_path / "data", port, {"STILLROOM_TOR_CONTROL": str(control)}
    )
    output = Output(process)
    try:
        output.expect(PUBLISHED, 60)
        operator.terminate()
        operator.wait(timeout=30)
        output.expect(re.compile(r"Tor went away; reconnecting in \d+ s"), 30)
        output.expect(re.compile(r"Tor is not back yet; trying again in \d+ s: cannot reach"), 30)
        assert local_status(port, "/en/") == 200, "the app keeps serving meanwhile"
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        stopped_after = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if operator.poll() is None:
            operator.kill()
            operator.wait()
    text = output.text()
    assert code == 0, text
    assert stopped_after < 10, "SIGTERM does not wait for the next try"
    assert "Stopped waiting for tor." in text
    assert "Onion service removed." not in text and "Traceback" not in text


def test_a_damaged_onion_key_is_refused_not_replaced(tmp_path, offline):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / service.KEY_FILE).write_text("")
    result = run_serve(
        {
            "STILLROOM_DATA_DIR": str(data),
            "STILLROOM_PARTICIPANT_PORT": "0",
            "STILLROOM_TOR_EXTRA_CONFIG": str(offline),
            "STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "1",
        }
    )
    assert result.returncode == 1
    assert "onion key" in result.stderr and "backup" in result.stderr
    assert "Starting a private tor" not in result.stdout, "refused before tor starts"
    assert (data / service.KEY_FILE).read_text() == ""


def test_a_relative_data_directory_works(tmp_path, offline):
    """The README's default is ./instance: tor must still find its control socket."""
    result = subprocess.run(
        [STILLROOM, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **stillroom_env(Path("instance"), 0),
            "STILLROOM_TOR_EXTRA_CONFIG": str(offline),
            "STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "2",
        },
    )
    assert "tor bootstrap 0%" in result.stdout, result.stderr
    assert "did not finish bootstrapping" in result.stderr
    assert (tmp_path / "instance" / "tor").is_dir()


def test_onion_status_reads_the_upload_count_and_since_when(tmp_path):
    status = tmp_path / service.STATUS_FILE
    assert service.read_uploads(tmp_path) == "none yet since serve last connected to tor"
    status.write_text("3\n2026-11-28 22:40 UTC\n2026-11-28 22:45 UTC\n")
    assert service.read_uploads(tmp_path) == (
        "3 to directory servers since serve connected to tor at 2026-11-28 22:40 UTC"
        " (last 2026-11-28 22:45 UTC)"
    )
    status.write_text("3 2026-11-28 22:45 UTC\n")  # as an older serve, still running, wrote it
    assert service.read_uploads(tmp_path) == "unknown until serve is restarted"
