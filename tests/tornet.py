"""A private Tor network on 127.0.0.1 for tests: five directory authorities and a client tor.

The shape follows the shared recipe "Real tor in tests, offline": the authorities start
first and the client only once every authority holds a consensus listing all five with Guard and
HSDir. Other tors (an onion service, the app's own tor) join with ``join_config_lines()``.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import stem
from stem.control import Controller

logger = logging.getLogger(__name__)

TOR_MISSING = "tor was not found: install Debian's tor (apt-get install tor, brings tor-gencert)"
AUTHORITY_COUNT = 5
ATTEMPT_SECONDS = 90.0
FETCH_ATTEMPTS = 4
POLL_SECONDS = 0.25
# Unix socket paths are limited to 108 bytes; keep a margin.
MAX_SOCKET_PATH = 100
# A fixed glibc mmap threshold hands big freed buffers back to the system. Without it each
# authority keeps about 57 MiB of consensus-diff compression buffers (14 -> 71 MiB RSS) once
# the second consensus is out, some 10-20 s after start.
MALLOC_TUNABLE = "glibc.malloc.mmap_threshold=131072"

# Options every tor of the network gets; GeoIPFile, GeoIPv6File and NumCPUs save most memory.
NETWORK_OPTIONS = (
    "TestingTorNetwork 1",
    'GeoIPFile ""',
    'GeoIPv6File ""',
    "NumCPUs 1",
    "PathsNeededToBuildCircuits 0.67",
    "TestingDirAuthVoteGuard *",
    "TestingDirAuthVoteHSDir *",
    "TestingMinExitFlagThreshold 0",
    "V3AuthNIntervalsValid 2",
)

# Options of a directory authority that votes every 10 s (faster voting made it worse).
AUTHORITY_OPTIONS = (
    "Address 127.0.0.1",
    "AssumeReachable 1",
    "ContactInfo tornet test authority <nobody@example.invalid>",
    "ExitRelay 0",
    "ExitPolicy reject *:*",
    "ServerDNSResolvConfFile /dev/null",
    "ServerDNSAllowBrokenConfig 1",
    "ServerDNSDetectHijacking 0",
    "AuthoritativeDirectory 1",
    "V3AuthoritativeDirectory 1",
    "TestingV3AuthInitialVotingInterval 10",
    "TestingV3AuthInitialVoteDelay 2",
    "TestingV3AuthInitialDistDelay 2",
    "V3AuthVotingInterval 10",
    "V3AuthVoteDelay 2",
    "V3AuthDistDelay 2",
    "SocksPort 0",
)

# SOCKS5 reply codes, with tor's extended codes for onion services (SocksPort ExtendedErrors).
SOCKS_REPLIES = {
    0x01: "general failure",
    0x02: "not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired (tor timed out)",
    0x07: "command not supported",
    0x08: "address type not supported",
    0xF0: "onion service descriptor not found",
    0xF1: "onion service descriptor invalid",
    0xF2: "onion service introduction failed",
    0xF3: "onion service rendezvous failed",
    0xF4: "onion service client authorization missing",
    0xF5: "onion service client authorization wrong",
    0xF6: "onion address invalid",
    0xF7: "onion service introduction timed out",
}


class TorNetworkError(RuntimeError):
    """A tor of the private network failed, exited or stalled."""


class SocksError(OSError):
    """The SOCKS5 handshake with the client tor failed."""


def find_tor() -> str | None:
    """Return the tor binary, also looking in the sbin directories a user's PATH may lack."""
    return shutil.which("tor") or shutil.which("tor", path=os.pathsep.join(_SBIN))


def find_tor_gencert() -> str | None:
    """Return the tor-gencert binary that comes with Debian's tor."""
    return shutil.which("tor-gencert") or shutil.which("tor-gencert", path=os.pathsep.join(_SBIN))


_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _require(binary: str | None) -> str:
    """Return the binary or raise the "install Debian's tor" error."""
    if binary is None:
        raise TorNetworkError(TOR_MISSING)
    return binary


def free_ports(count: int) -> list[int]:
    """Return distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def private_dir(path: Path) -> Path:
    """Create a directory only its owner can enter (tor insists on 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def rss_mib(pids: Iterable[int]) -> float:
    """Sum the resident memory (VmRSS) of the given processes, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def _tail(path: Path, lines: int) -> str:
    """Return the last lines of a text file, or an empty string."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _check_path(path: Path) -> None:
    """Refuse paths a torrc line cannot carry as they are."""
    if any(char.isspace() or char == '"' for char in str(path)):
        raise ValueError(f"tor paths must not contain spaces or quotes: {path}")


@dataclass
class TorProcess:
    """One running tor with its own data directory, control socket and log files.

    Tor is told that this test process owns it. The first stem controller opened from this
    process (connect() opens it) takes ownership: tor exits when that controller closes. App
    code attaching in-process must therefore come after connect(); subprocesses are unaffected.
    """

    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    options: tuple[str, ...] = ()
    _controller: Controller | None = field(default=None, repr=False)

    @classmethod
    def launch(cls, name: str, data_dir: Path, options: Sequence[str]) -> TorProcess:
        """Start tor with options plus its DataDirectory, ControlSocket, cookie auth and log."""
        tor = _require(find_tor())
        data_dir = data_dir.absolute()
        _check_path(data_dir)
        control = data_dir / "control"
        if len(str(control)) > MAX_SOCKET_PATH:
            raise ValueError(f"control socket path too long for a unix socket: {control}")
        # Tor checks the control socket's directory before it creates its DataDirectory.
        private_dir(data_dir)
        torrc = data_dir / "torrc"
        lines = [
            f"DataDirectory {data_dir}",
            f"ControlSocket {control}",
            "CookieAuthentication 1",
            f"Log notice file {data_dir / 'notice.log'}",
            # stem's first controller takes ownership: tor exits when it closes (stop() does
            # that) or when the test process dies without cleaning up.
            f"__OwningControllerProcess {os.getpid()}",
            *options,
        ]
        torrc.write_text("\n".join(lines) + "\n")
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLE]))
        with (data_dir / "console.log").open("wb") as console:
            process = subprocess.Popen(
                [tor, "-f", str(torrc)],
                env={**os.environ, "GLIBC_TUNABLES": tunables},
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, data_dir, process, tuple(options))

    @property
    def pid(self) -> int:
        """Return the process id of this tor."""
        return self.process.pid

    @property
    def control_socket(self) -> Path:
        """Return the path of this tor's control socket."""
        return self.data_dir / "control"

    @property
    def log_path(self) -> Path:
        """Return the path of this tor's notice log."""
        return self.data_dir / "notice.log"

    @property
    def alive(self) -> bool:
        """Tell whether the tor process is still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of this tor's logs, for error messages."""
        parts = [f"--- last lines of {self.log_path} ---", _tail(self.log_path, lines)]
        console = _tail(self.data_dir / "console.log", lines)
        if console and not self.alive:
            parts += [f"--- console output of {self.name} ---", console]
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Raise TorNetworkError with the log tail if tor has exited."""
        if not self.alive:
            raise TorNetworkError(
                f"tor {self.name!r} exited with status {self.process.returncode}\n"
                + self.log_tail()
            )

    def connect(self, deadline: float) -> Controller:
        """Return the controller that owns this tor, connecting it first if needed.

        Closing this controller makes tor exit; more controllers opened with stem don't own it.
        """
        if self._controller is None:
            self._controller = self._authenticated_controller(deadline)
        return self._controller

    def _authenticated_controller(self, deadline: float) -> Controller:
        """Open and authenticate a stem Controller on the control socket, waiting for it."""
        cookie = self.data_dir / "control_auth_cookie"
        last_error = "no control socket yet"
        while True:
            self.check_alive()
            if self.control_socket.exists() and cookie.exists():
                try:
                    controller = Controller.from_socket_file(str(self.control_socket))
                except stem.SocketError as error:
                    last_error = repr(error)
                else:
                    try:
                        controller.authenticate()
                    except Exception as error:
                        controller.close()
                        last_error = repr(error)
                    else:
                        return controller
            if time.monotonic() > deadline:
                raise TorNetworkError(
                    f"could not control tor {self.name!r} in time ({last_error})\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def wait_bootstrapped(self, controller: Controller, deadline: float) -> None:
        """Wait until tor reports bootstrap progress 100 %, or raise TorNetworkError."""
        phase = ""
        while True:
            self.check_alive()
            phase = controller.get_info("status/bootstrap-phase")
            if "PROGRESS=100" in phase:
                return
            if time.monotonic() > deadline:
                raise TorNetworkError(
                    f"tor {self.name!r} did not bootstrap in time (last: {phase})\n"
                    + self.log_tail()
                )
            time.sleep(POLL_SECONDS / 2)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate this tor by PID and wait for it."""
        _stop_all([self], timeout)

    def restart(self) -> None:
        """Stop this tor and start it again on the same data directory and control socket.

        What an operator's ``systemctl restart tor`` does: tor forgets every control
        connection and every service added over one.
        """
        self.stop()
        self.process = TorProcess.launch(self.name, self.data_dir, self.options).process


def _stop_all(tors: Sequence[TorProcess], timeout: float = 10.0) -> None:
    """Close the owning controllers, SIGTERM every tor, wait, and kill those still running."""
    for tor in tors:
        if tor._controller is not None:
            tor._controller.close()
            tor._controller = None
        if tor.alive:
            tor.process.terminate()
    deadline = time.monotonic() + timeout
    for tor in tors:
        try:
            tor.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            tor.process.kill()
            tor.process.wait()


def _run_all(commands: Sequence[Sequence[str]], stdin: bytes, deadline: float) -> list[str]:
    """Run commands in parallel and return their outputs, or raise TorNetworkError."""
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for command in commands
    ]
    outputs: list[str] = []
    try:
        for command, process in zip(commands, processes, strict=True):
            try:
                output, _ = process.communicate(
                    stdin, timeout=max(0.1, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                raise TorNetworkError(f"{' '.join(command)} timed out") from None
            text = output.decode(errors="replace")
            if process.returncode != 0:
                raise TorNetworkError(f"{' '.join(command)} failed:\n{text}")
            outputs.append(text)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                process.communicate()
    return outputs


@dataclass(frozen=True)
class Authority:
    """The identity and ports of one directory authority."""

    nickname: str
    data_dir: Path
    or_port: int
    dir_port: int
    v3ident: str
    fingerprint: str

    def dir_authority_line(self) -> str:
        """Return the torrc DirAuthority line naming this authority."""
        return (
            f"DirAuthority {self.nickname} orport={self.or_port} no-v2 v3ident={self.v3ident}"
            f" 127.0.0.1:{self.dir_port} {self.fingerprint}"
        )

    def options(self) -> list[str]:
        """Return the torrc options of this authority beyond the network's."""
        return [
            f"Nickname {self.nickname}",
            f"ORPort 127.0.0.1:{self.or_port}",
            f"DirPort 127.0.0.1:{self.dir_port}",
            *AUTHORITY_OPTIONS,
        ]


def create_authorities(base_dir: Path, deadline: float) -> list[Authority]:
    """Choose ports and create the keys of the authorities with tor-gencert."""
    tor, gencert = _require(find_tor()), _require(find_tor_gencert())
    ports = free_ports(2 * AUTHORITY_COUNT)
    nicknames = [f"auth{index}" for index in range(AUTHORITY_COUNT)]
    dirs = [private_dir(base_dir / nickname) for nickname in nicknames]
    for data_dir in dirs:
        private_dir(data_dir / "keys")
    # An empty line on stdin is the empty passphrase of the authority identity key. The tor
    # commands create the relay identity keys and write the fingerprint file; all run at once.
    _run_all(
        [
            *(
                [
                    gencert,
                    "--create-identity-key",
                    "--passphrase-fd",
                    "0",
                    "-i",
                    str(data_dir / "keys" / "authority_identity_key"),
                    "-s",
                    str(data_dir / "keys" / "authority_signing_key"),
                    "-c",
                    str(data_dir / "keys" / "authority_certificate"),
                    "-m",
                    "12",
                    "-a",
                    f"127.0.0.1:{ports[2 * index + 1]}",
                ]
                for index, data_dir in enumerate(dirs)
            ),
            *(
                [
                    tor,
                    "--ignore-missing-torrc",
                    "-f",
                    "/dev/null",
                    "--DataDirectory",
                    str(data_dir),
                    "--Nickname",
                    nickname,
                    "--ORPort",
                    f"127.0.0.1:{ports[2 * index]}",
                    "--GeoIPFile",
                    "",
                    "--GeoIPv6File",
                    "",
                    "--list-fingerprint",
                    "--quiet",
                ]
                for index, (nickname, data_dir) in enumerate(zip(nicknames, dirs, strict=True))
            ),
        ],
        b"\n",
        deadline,
    )
    authorities = []
    for index, (nickname, data_dir) in enumerate(zip(nicknames, dirs, strict=True)):
        certificate = (data_dir / "keys" / "authority_certificate").read_text()
        v3ident = next(
            line.split()[1] for line in certificate.splitlines() if line.startswith("fingerprint ")
        )
        fingerprint = (data_dir / "fingerprint").read_text().split()[1]
        authorities.append(
            Authority(
                nickname, data_dir, ports[2 * index], ports[2 * index + 1], v3ident, fingerprint
            )
        )
    return authorities


def _consensus_flags(controller: Controller) -> dict[str, set[str]]:
    """Return nickname -> flags of the consensus this tor holds (empty if it has none)."""
    try:
        text = controller.get_info("ns/all")
    except stem.ControllerError:
        return {}
    flags: dict[str, set[str]] = {}
    nickname = None
    for line in text.splitlines():
        if line.startswith("r "):
            nickname = line.split()[1]
            flags[nickname] = set()
        elif line.startswith("s ") and nickname is not None:
            flags[nickname] = set(line.split()[1:])
    return flags


def _consensus_problem(flags: Mapping[str, set[str]], nicknames: Iterable[str]) -> str:
    """Describe what a consensus lacks, or return an empty string if it is complete."""
    if not flags:
        return "no consensus yet"
    lacking = [name for name in nicknames if not {"Guard", "HSDir"} <= flags.get(name, set())]
    return f"lists {sorted(flags)}, without Guard+HSDir: {lacking}" if lacking else ""


class _DeadlineReader(io.RawIOBase):
    """A socket reader that fails once the attempt's deadline has passed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        """Tell io that this stream can be read."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Receive into buffer within the remaining time."""
        _set_remaining(self._sock, self._deadline)
        return self._sock.recv_into(buffer)


class _ResponseSource:
    """The minimal socket stand-in that http.client.HTTPResponse reads from."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._file = io.BufferedReader(_DeadlineReader(sock, deadline))

    def makefile(self, mode: str) -> io.BufferedReader[_DeadlineReader]:
        """Return the buffered, deadline-bound reader."""
        return self._file


def _set_remaining(sock: socket.socket, deadline: float) -> None:
    """Set the socket timeout to the time left, or raise TimeoutError."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("attempt timed out")
    sock.settimeout(remaining)


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Receive exactly size bytes before the deadline."""
    data = b""
    while len(data) < size:
        _set_remaining(sock, deadline)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SocksError("tor closed the SOCKS connection")
        data += chunk
    return data


def socks5_connect(
    sock: socket.socket, host: str, port: int, credentials: tuple[str, str], deadline: float
) -> None:
    """Ask tor, over a connected SOCKS5 socket, to open a stream to host:port (ATYP=domain)."""
    name = host.encode("idna")
    username, password = (value.encode() for value in credentials)
    _set_remaining(sock, deadline)
    sock.sendall(b"\x05\x01\x02")  # version 5, one method: username/password
    if _recv_exact(sock, 2, deadline) != b"\x05\x02":
        raise SocksError("tor refused SOCKS5 username/password authentication")
    _set_remaining(sock, deadline)
    sock.sendall(b"\x01" + bytes([len(username)]) + username + bytes([len(password)]) + password)
    if _recv_exact(sock, 2, deadline)[1] != 0:
        raise SocksError("tor rejected the SOCKS5 credentials")
    _set_remaining(sock, deadline)
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    _version, reply, _reserved, address_type = _recv_exact(sock, 4, deadline)
    if reply != 0:
        reason = SOCKS_REPLIES.get(reply, f"reply {reply:#04x}")
        raise SocksError(f"SOCKS5 CONNECT to {host}:{port} failed: {reason}")
    if address_type == 0x03:
        address_size = _recv_exact(sock, 1, deadline)[0]
    else:
        address_size = {0x01: 4, 0x04: 16}.get(address_type, 0)
    _recv_exact(sock, address_size + 2, deadline)


def _http_request(
    method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None
) -> tuple[str, int, bytes]:
    """Return host, port and the bytes of an HTTP/1.1 request for url."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"fetch only takes http:// URLs with a host: {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    fields = {"host": ("Host", parts.netloc), "connection": ("Connection", "close")}
    fields["accept-encoding"] = ("Accept-Encoding", "identity")
    if data is not None:
        fields["content-length"] = ("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        fields[name.lower()] = (name, value)
    head = f"{method} {target} HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields.values())
    return parts.hostname, parts.port or 80, head.encode("latin-1") + b"\r\n" + (data or b"")


class TorNetwork:
    """Five directory authorities and a client tor on 127.0.0.1; close() stops them all."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.authorities: list[Authority] = []
        self.tors: list[TorProcess] = []
        self.client: TorProcess | None = None
        self.socks_port = 0
        self.attempts_used = 0
        self.build_seconds = 0.0
        self.timings: dict[str, float] = {}
        self._credentials = self._new_credentials()

    @classmethod
    def build(cls, base_dir: Path, attempts: int = 2) -> TorNetwork:
        """Start the network under base_dir, tearing down and rebuilding if it stalls."""
        _require(find_tor())
        _require(find_tor_gencert())
        _check_path(base_dir.absolute())
        started = time.monotonic()
        failures: list[str] = []
        for attempt in range(1, attempts + 1):
            network = cls(base_dir.absolute() / f"attempt-{attempt}")
            try:
                network._start(time.monotonic() + ATTEMPT_SECONDS)
            except (TorNetworkError, stem.ControllerError) as error:
                network.close()
                failures.append(f"attempt {attempt}: {error}")
                if attempt < attempts:
                    _announce(
                        f"private Tor network attempt {attempt} of {attempts} failed, "
                        f"tearing it down and rebuilding. Reason: {error}"
                    )
                continue
            except BaseException:
                network.close()
                raise
            network.attempts_used = attempt
            network.build_seconds = time.monotonic() - started
            logger.info("private Tor network up in %.1f s", network.build_seconds)
            return network
        raise TorNetworkError(
            f"private Tor network failed {attempts} time(s):\n" + "\n\n".join(failures)
        )

    def _start(self, deadline: float) -> None:
        """Create keys, start the authorities, wait for their consensus, start the client."""
        private_dir(self.base_dir)
        phase_start = time.monotonic()
        self.authorities = create_authorities(self.base_dir, deadline)
        self.timings["keys"] = time.monotonic() - phase_start

        phase_start = time.monotonic()
        network_options = self.join_config_lines()
        for authority in self.authorities:
            self.tors.append(
                TorProcess.launch(
                    authority.nickname,
                    authority.data_dir,
                    [*network_options, *authority.options()],
                )
            )
        self._wait_for_consensus(deadline)
        self.timings["consensus"] = time.monotonic() - phase_start

        phase_start = time.monotonic()
        (self.socks_port,) = free_ports(1)
        private_dir(self.base_dir / "client" / "onion-auth")
        self.client = TorProcess.launch(
            "client",
            self.base_dir / "client",
            [
                *network_options,
                f"SocksPort 127.0.0.1:{self.socks_port} ExtendedErrors",
                # Where ONION_CLIENT_AUTH_ADD Flags=Permanent keeps a key, as Tor Browser does
                # when asked to remember it. An ephemeral key would be forgotten by NEWNYM.
                f"ClientOnionAuthDir {self.base_dir / 'client' / 'onion-auth'}",
            ],
        )
        self.tors.append(self.client)
        self.client.wait_bootstrapped(self.client.connect(deadline), deadline)
        self.timings["client_bootstrap"] = time.monotonic() - phase_start

    def _wait_for_consensus(self, deadline: float) -> None:
        """Wait until every authority holds a consensus listing all with Guard and HSDir."""
        nicknames = [authority.nickname for authority in self.authorities]
        controllers = [tor.connect(deadline) for tor in self.tors]
        while True:
            problems = {
                tor.name: _consensus_problem(_consensus_flags(controller), nicknames)
                for tor, controller in zip(self.tors, controllers, strict=True)
            }
            lagging = {name: problem for name, problem in problems.items() if problem}
            if not lagging:
                return
            for tor in self.tors:
                tor.check_alive()
            if time.monotonic() > deadline:
                first = next(tor for tor in self.tors if tor.name in lagging)
                raise TorNetworkError(
                    "the authorities did not agree on a full consensus in time: "
                    + "; ".join(f"{name} {problem}" for name, problem in lagging.items())
                    + "\n"
                    + first.log_tail()
                )
            time.sleep(POLL_SECONDS)

    def join_config_lines(self) -> list[str]:
        """Return the torrc lines another tor needs to join this network."""
        return [
            *NETWORK_OPTIONS,
            *(authority.dir_authority_line() for authority in self.authorities),
        ]

    def write_join_config(self, path: Path) -> Path:
        """Write join_config_lines() to a torrc-style file and return its path."""
        path.write_text("\n".join(self.join_config_lines()) + "\n")
        return path

    def pids(self) -> list[int]:
        """Return the process ids of the network's running tors."""
        return [tor.pid for tor in self.tors if tor.alive]

    def rss_mib(self) -> float:
        """Return the resident memory of all the network's tors, in MiB."""
        return rss_mib(self.pids())

    def newnym(self) -> None:
        """Send SIGNAL NEWNYM to the client: new circuits, onion service state forgotten."""
        if self.client is None:
            raise TorNetworkError("the client tor is not running")
        controller = self.client.connect(time.monotonic() + 10)
        # Tor takes one NEWNYM per 10 s and delays the next one; a retry sent before it
        # applies would meet the same "no more HSDir to query" cache, so wait for it here.
        time.sleep(min(10.0, controller.get_newnym_wait()))
        controller.signal(stem.Signal.NEWNYM)

    @staticmethod
    def _new_credentials() -> tuple[str, str]:
        """Return a fresh SOCKS username and password, which isolate streams in tor."""
        return f"tornet-{secrets.token_hex(6)}", secrets.token_hex(6)

    def fetch(
        self,
        url: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Make an HTTP/1.1 request through the client, retrying a stall after NEWNYM.

        Returns the status, the headers (lower-case names, repeated ones joined with ", ")
        and the body. Each attempt is bounded by timeout; at most FETCH_ATTEMPTS attempts.
        """
        if self.client is None:
            raise TorNetworkError("the client tor is not running")
        host, port, request = _http_request(method, url, data, headers)
        failures: list[str] = []
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            self.client.check_alive()
            started = time.monotonic()
            try:
                return self._fetch_once(host, port, request, method, started + timeout)
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"attempt {attempt}: {type(error).__name__}: {error}")
                if attempt == FETCH_ATTEMPTS:
                    break
                _announce(
                    f"fetch {url} attempt {attempt} failed ({error!r}); "
                    "sending NEWNYM and retrying with new SOCKS credentials"
                )
                self.newnym()
                self._credentials = self._new_credentials()
                # A fast refusal (descriptor not yet on the HSDir) deserves a short pause.
                time.sleep(max(0.0, started + 1.0 - time.monotonic()))
        raise TorNetworkError(
            f"fetch {url} failed {FETCH_ATTEMPTS} times: "
            + "; ".join(failures)
            + "\n"
            + self.client.log_tail()
        )

    def _fetch_once(
        self, host: str, port: int, request: bytes, method: str, deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        """Make one request attempt that fails after the deadline."""
        with socket.create_connection(
            ("127.0.0.1", self.socks_port), timeout=max(0.1, deadline - time.monotonic())
        ) as sock:
            socks5_connect(sock, host, port, self._credentials, deadline)
            _set_remaining(sock, deadline)
            sock.sendall(request)
            response = http.client.HTTPResponse(
                _ResponseSource(sock, deadline),  # type: ignore[arg-type]
                method=method,
            )
            try:
                response.begin()
                body = response.read()
            finally:
                response.close()
        found: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            found[key] = f"{found[key]}, {value}" if key in found else value
        return response.status, found, body

    def close(self) -> None:
        """Terminate every tor of the network by PID and wait for them."""
        _stop_all(self.tors)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _announce(message: str) -> None:
    """Log a warning and print it to stderr, so retries show up in test output."""
    logger.warning(message)
    print(f"tornet: {message}", file=sys.stderr, flush=True)
