"""End to end through a private Tor network on 127.0.0.1: `stillroom serve` as operators run it."""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import stem
from loadclients import create_chats, log_in
from test_held_feed import write

from stillroom.webapp.settings import Settings

import tornet
from support import (
    FORM_TOKEN,
    PASSPHRASE,
    PENDING,
    add_therapist_by_cli,
    free_port,
    stillroom_env,
)

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
PUBLISHED = re.compile(r"Onion service published: http://([a-z2-7]{56}\.onion)/")
UPLOADS = r"descriptor uploads: [1-9]\d* to directory servers since serve connected to tor at "


@dataclass
class Serve:
    """A running `stillroom serve` whose output is read line by line."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Return the first output line matching ``pattern``, waiting at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match
        output = "".join(self.seen)
        raise AssertionError(f"serve never printed {pattern.pattern}:\n{output}")

    def stop(self) -> int:
        """Send SIGTERM, as systemd does, and return the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.drain()

    def drain(self) -> None:
        while not self.lines.empty():
            self.seen.append(self.lines.get())


def start_serve(data_dir: Path, port: int, env: dict[str, str]) -> Serve:
    process = subprocess.Popen(
        [STILLROOM, "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=stillroom_env(
            data_dir,
            port,
            {
                "STILLROOM_TOR_PUBLISH_TIMEOUT": "90",
                "STILLROOM_TOR_BOOTSTRAP_TIMEOUT": "90",
                **env,
            },
        ),
    )
    serve = Serve(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            serve.lines.put(line)
        process.stdout.close()

    threading.Thread(target=pump, daemon=True).start()
    return serve


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def onion_status(data_dir: Path) -> str:
    """Return what ``stillroom onion status`` prints for this data directory."""
    return subprocess.run(
        [STILLROOM, "onion", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": str(data_dir)},
    ).stdout


def create_account_through_tor(network: tornet.TorNetwork, address: str) -> str:
    """Create an account on the onion service with nothing but the Tor client."""
    status, _, body = network.fetch(f"http://{address}/en/create")
    assert status == 200
    page = body.decode()
    form = {
        "form_token": FORM_TOKEN.search(page).group(1),
        "pending": PENDING.search(page).group(1),
        "confirm": PASSPHRASE.search(page).group(1),
    }
    status, headers, _ = network.fetch(
        f"http://{address}/en/create",
        method="POST",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 302, status
    cookie = {k.lower(): v for k, v in headers.items()}["set-cookie"]
    assert "httponly" in cookie.lower()
    return cookie.split(";", 1)[0]


@pytest.fixture(scope="module")
def join_config(tor_network: tornet.TorNetwork, tmp_path_factory) -> Path:
    return tor_network.write_join_config(tmp_path_factory.mktemp("join") / "join.torrc")


def test_serve_launches_tor_and_publishes_the_app(tor_network, join_config, tmp_path, capsys):
    """The README's run command, joined to the private network by one setting."""
    started = time.monotonic()
    serve = start_serve(
        tmp_path / "data", free_port(), {"STILLROOM_TOR_EXTRA_CONFIG": str(join_config)}
    )
    try:
        serve.wait_for(re.compile(r"tor bootstrap 100%"), 120)
        address = serve.wait_for(PUBLISHED, 120).group(1)
        to_descriptor = time.monotonic() - started
        status, headers, body = tor_network.fetch(f"http://{address}/en/")
        assert status == 200 and b"Stillroom" in body
        # Names come lower-case; no server name and no clock of the host's (its skew).
        assert "content-security-policy" in headers
        assert "server" not in headers and "date" not in headers
        _, token = add_therapist_by_cli(tmp_path / "data", "Anna")  # a link that really works
        for portal_page in ("/en/availability", f"/en/enrol/{token}", "/en/passphrase"):
            status, _, _ = tor_network.fetch(f"http://{address}{portal_page}")
            assert status == 404, (
                f"the portal must not be reachable through the onion: {portal_page}"
            )
        cookie = create_account_through_tor(tor_network, address)
        status, _, body = tor_network.fetch(
            f"http://{address}/en/account", headers={"Cookie": cookie}
        )
        assert status == 200 and b'action="/en/logout"' in body
        tor_pids = child_pids(serve.process.pid)
        assert tor_pids, "serve launched its own tor"
        tor_mib = tornet.rss_mib(tor_pids)
        status_output = onion_status(tmp_path / "data")
        assert f"address: {address}" in status_output
        assert "bootstrap: 100%" in status_output
        assert "published: yes" in status_output
        assert "pow: on (pow-params v1" in status_output, status_output
        assert re.search(UPLOADS, status_output)
    finally:
        code = serve.stop()
    output = "".join(serve.seen)
    assert code == 0, output
    assert "Onion service removed." in output and "Tor stopped." in output
    assert all(not Path(f"/proc/{pid}").exists() for pid in tor_pids), "tor stopped with serve"
    key = tmp_path / "data" / "onion.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().split(":", 1)[1].strip() not in output, "the key is never printed"
    with capsys.disabled():
        print(
            f"\n[onion] serve to published descriptor: {to_descriptor:.1f} s;"
            f" serve's tor: {tor_mib:.0f} MiB"
        )


def test_attach_mode_republishes_the_same_address(tor_network, tmp_path, capsys):
    """An operator's tor keeps running; serve restarts and comes back at the same address."""
    operator = tornet.TorProcess.launch(
        "operator", tmp_path / "operator", [*tor_network.join_config_lines(), "SocksPort 0"]
    )
    try:
        env = {"STILLROOM_TOR_CONTROL": str(operator.control_socket)}
        data, port = tmp_path / "data", free_port()
        started = time.monotonic()
        first = start_serve(data, port, env)
        try:
            address = first.wait_for(PUBLISHED, 120).group(1)
            assert tor_network.fetch(f"http://{address}/en/")[0] == 200
        finally:
            assert first.stop() == 0
        assert operator.alive, "serve never stops a tor it attached to"
        assert "Detached from tor; it keeps running." in "".join(first.seen)
        controller = operator.connect(time.monotonic() + 10)
        with pytest.raises(stem.ControllerError):
            controller.get_info(f"hs/service/desc/id/{address.removesuffix('.onion')}")
        second = start_serve(data, port, env)
        try:
            again = second.wait_for(PUBLISHED, 120).group(1)
            assert again == address
            status, _, body = tor_network.fetch(f"http://{address}/de/")
            assert status == 200 and b'lang="de"' in body
        finally:
            assert second.stop() == 0
        elapsed = time.monotonic() - started
    finally:
        operator.stop()
    with capsys.disabled():
        print(f"\n[onion] attach, publish, restart, republish, fetch twice: {elapsed:.1f} s")


def local_status(port: int, path: str) -> int:
    """Ask the participant app directly on 127.0.0.1, as the onion service's target."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return int(response.status)


def test_serve_comes_back_by_itself_when_the_operators_tor_restarts(tor_network, tmp_path, capsys):
    """`systemctl restart tor` under a running serve: the same address again, nobody steps in."""
    operator = tornet.TorProcess.launch(
        "operator", tmp_path / "operator", [*tor_network.join_config_lines(), "SocksPort 0"]
    )
    try:
        port = free_port()
        serve = start_serve(
            tmp_path / "data", port, {"STILLROOM_TOR_CONTROL": str(operator.control_socket)}
        )
        try:
            address = serve.wait_for(PUBLISHED, 120).group(1)
            assert tor_network.fetch(f"http://{address}/en/")[0] == 200
            started = time.monotonic()
            operator.restart()
            serve.wait_for(re.compile(r"Tor went away; reconnecting in \d+ s"), 30)
            assert local_status(port, "/en/") == 200, "the app keeps serving while tor is away"
            assert serve.wait_for(PUBLISHED, 120).group(1) == address
            republished = time.monotonic() - started
            status, _, body = tor_network.fetch(f"http://{address}/en/")
            assert status == 200 and b"Stillroom" in body
            reachable = time.monotonic() - started
        finally:
            code = serve.stop()
        output = "".join(serve.seen)
        assert code == 0, output
        assert "Detached from tor; it keeps running." in output
        assert "Traceback" not in output
        assert operator.alive, "serve never stops a tor it attached to"
    finally:
        operator.stop()
    with capsys.disabled():
        print(
            f"\n[onion] operator's tor restarted: republished after {republished:.1f} s,"
            f" reachable through the onion after {reachable:.1f} s"
        )


def test_serve_starts_its_tor_again_when_it_dies(tor_network, join_config, tmp_path, capsys):
    """Serve's own tor is killed: serve launches a new one and the address comes back."""
    port = free_port()
    serve = start_serve(tmp_path / "data", port, {"STILLROOM_TOR_EXTRA_CONFIG": str(join_config)})
    try:
        address = serve.wait_for(PUBLISHED, 120).group(1)
        [first_tor] = child_pids(serve.process.pid)
        started = time.monotonic()
        os.kill(first_tor, signal.SIGKILL)
        serve.wait_for(re.compile(r"Tor went away; starting it again in \d+ s"), 30)
        assert local_status(port, "/en/") == 200, "the app keeps serving while tor is away"
        assert serve.wait_for(PUBLISHED, 120).group(1) == address
        republished = time.monotonic() - started
        [second_tor] = child_pids(serve.process.pid)
        assert second_tor != first_tor
        status, _, body = tor_network.fetch(f"http://{address}/en/")
        assert status == 200 and b"Stillroom" in body
        reachable = time.monotonic() - started
        status_output = onion_status(tmp_path / "data")  # from the new tor and its new log
        assert f"address: {address}" in status_output and "bootstrap: 100%" in status_output
        assert re.search(UPLOADS, status_output), status_output
    finally:
        code = serve.stop()
    output = "".join(serve.seen)
    assert code == 0, output
    assert "Onion service removed." in output and "Tor stopped." in output
    assert "Traceback" not in output
    with capsys.disabled():
        print(
            f"\n[onion] serve's tor killed: republished after {republished:.1f} s,"
            f" reachable through the onion after {reachable:.1f} s"
        )


def test_restricted_discovery_admits_only_key_holders(tor_network, join_config, tmp_path):
    """A closed pilot: without the printed key the client cannot even find the service."""
    data, port = tmp_path / "data", free_port()
    env = {"STILLROOM_TOR_EXTRA_CONFIG": str(join_config)}
    first = start_serve(data, port, env)
    try:
        address = first.wait_for(PUBLISHED, 120).group(1)
    finally:
        assert first.stop() == 0
    added = subprocess.run(
        [STILLROOM, "onion", "clients", "add", "pilot-1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": str(data)},
    )
    assert added.returncode == 0, added.stderr
    key = re.search(r"the key alone\): ([A-Z2-7]{52})", added.stdout).group(1)
    restricted = start_serve(data, port, env)
    client = tor_network.client.connect(time.monotonic() + 10)
    service_id = address.removesuffix(".onion")
    try:
        assert restricted.wait_for(PUBLISHED, 120).group(1) == address
        with pytest.raises(tornet.TorNetworkError, match="client authorization missing"):
            tor_network.fetch(f"http://{address}/en/", timeout=5)
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
        # Permanent, as a participant's Tor Browser keeps it: fetch retries after NEWNYM,
        # and NEWNYM (even one delayed by its rate limit) forgets ephemeral keys.
        answer = client.msg(
            f"ONION_CLIENT_AUTH_ADD {service_id} x25519:{base64.b64encode(raw).decode()}"
            " Flags=Permanent"
        )
        assert answer.content()[0][0] in {"250", "251", "252"}, str(answer)  # 25x: accepted
        status, _, body = tor_network.fetch(f"http://{address}/en/")
        assert status == 200 and b"Stillroom" in body
    finally:
        client.msg(f"ONION_CLIENT_AUTH_REMOVE {service_id}")
        assert restricted.stop() == 0


def test_a_message_reaches_a_held_feed_through_the_onion(tor_network, join_config, tmp_path):
    """Without JavaScript, a participant's held feed reload answers with the therapist's
    message within 2 s of its sending, through the .onion."""
    data_dir, port = tmp_path / "data", free_port()
    env = {
        "STILLROOM_TOR_EXTRA_CONFIG": str(join_config),
        "STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120",
    }
    server_env = stillroom_env(data_dir, port, env)
    [chat] = create_chats(1, Settings.load(server_env))
    serve = start_serve(
        data_dir, port, {**env, "STILLROOM_PORTAL_PORT": server_env["STILLROOM_PORTAL_PORT"]}
    )
    try:
        address = serve.wait_for(PUBLISHED, 120).group(1)
        portal_port = int(server_env["STILLROOM_PORTAL_PORT"])
        asyncio.run(log_in(chat, port, portal_port))
        feed = f"http://{address}/en/chat/{chat.appointment}/feed"
        status, headers, _ = tor_network.fetch(feed, headers={"Cookie": chat.participant_cookie})
        assert status == 200
        etag = headers["etag"]
        answers: list[tuple[int, bytes, float]] = []

        def reload() -> None:
            status, _, body = tor_network.fetch(
                f"{feed}?seen={etag.strip(chr(34))}",
                headers={"Cookie": chat.participant_cookie, "If-None-Match": etag},
                timeout=70,
            )
            answers.append((status, body, time.monotonic()))

        reloading = threading.Thread(target=reload, daemon=True)
        reloading.start()
        time.sleep(5)  # the reload has crossed the network and is held
        assert not answers, "held, not answered"
        sent = time.monotonic()
        write(SimpleNamespace(portal_url=f"http://127.0.0.1:{portal_port}"), chat, "Through Tor.")
        reloading.join(30)
        [(status, body, arrived)] = answers
        assert status == 200 and b"Through Tor." in body
        print(f"\n[onion] held feed: message arrived {arrived - sent:.2f} s after sending")
        assert arrived - sent < 2
    finally:
        assert serve.stop() == 0
