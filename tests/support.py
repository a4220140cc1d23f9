"""Helpers for the tests: fast argon2, a movable clock, page forms, a real server."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import numpy
import pyotp
from flask.testing import FlaskClient

from stillroom.crypto.kdf import FAST_FOR_TESTS, Argon2Params
from stillroom.webapp.assist.embed import Embedder
from stillroom.webapp.settings import LANGUAGES
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import add_therapist

FAST_ARGON2 = {
    "argon2_time_cost": FAST_FOR_TESTS.time_cost,
    "argon2_memory_kib": FAST_FOR_TESTS.memory_kib,
    "argon2_parallelism": FAST_FOR_TESTS.parallelism,
}

#: Most tests make many accounts at one moment and book with them at once; the tests of
#: these limits on intake set them.
NO_INTAKE_LIMITS = {"booking_min_account_hours": 0, "accounts_per_minute": 10_000}


def argon2_env(params: Argon2Params) -> dict[str, str]:
    """Return the ``STILLROOM_ARGON2_*`` variables that give a process these costs."""
    return {
        "STILLROOM_ARGON2_TIME_COST": str(params.time_cost),
        "STILLROOM_ARGON2_MEMORY_KIB": str(params.memory_kib),
        "STILLROOM_ARGON2_PARALLELISM": str(params.parallelism),
    }


class Clock:
    """A clock the tests can move forward."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
PENDING = re.compile(r'name="pending" value="([^"]+)"')
PASSPHRASE = re.compile(r'id="passphrase">([^<]+)<')


def form_fields(html: str) -> dict[str, str]:
    """Return the hidden fields of the first form on a page."""
    fields = {"form_token": FORM_TOKEN.search(html).group(1)}  # type: ignore[union-attr]
    pending = PENDING.search(html)
    if pending:
        fields["pending"] = pending.group(1)
    return fields


class LoopbackClient(FlaskClient):
    """A test client that arrives as the onion service does: Host 127.0.0.1."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("base_url", "http://127.0.0.1")
        return super().open(*args, **kwargs)


class AuthActions:
    """Create accounts, log in and out through the real pages."""

    def __init__(self, client: FlaskClient, lang: str = "en") -> None:
        self.client = client
        self.lang = lang

    def post(self, path: str, data: dict[str, str] | None = None, page: str | None = None):
        html = self.client.get(f"/{self.lang}{page or path}").get_data(as_text=True)
        return self.client.post(f"/{self.lang}{path}", data={**form_fields(html), **(data or {})})

    def create(self) -> str:
        html = self.client.get(f"/{self.lang}/create").get_data(as_text=True)
        passphrase = shown_passphrase(html)
        response = self.client.post(
            f"/{self.lang}/create", data={**form_fields(html), "confirm": passphrase}
        )
        assert response.status_code == 302, response.get_data(as_text=True)
        return passphrase

    def login(self, passphrase: str):
        return self.post("/login", {"passphrase": passphrase})

    def logout(self):
        return self.post("/logout", page="/")


#: Values that have broken web apps before: empty, NUL, traversal, huge, markup, bidi, U+FFFD.
NASTY = ["", "\x00", "%00", "../../etc/passwd", "a" * 3000, "<script>", "\u202e", "\ufffd"]


def every_rule_url(app) -> list[str]:
    """Return one concrete URL for every route the app has, in every language."""
    urls = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "stylesheet":
            urls.append(app.jinja_env.globals["stylesheet_url"])
        elif "lang" in rule.arguments:
            urls.extend(re.sub(r"<[^>]*:lang>", lang, rule.rule) for lang in LANGUAGES)
        else:
            urls.append(rule.rule)
    return urls


TOTP_SECRET = re.compile(r'id="totp-secret">([^<]+)<')


def shown_passphrase(html: str) -> str:
    """Return the passphrase a page shows once (to a new participant or therapist)."""
    return PASSPHRASE.search(html).group(1)  # type: ignore[union-attr]


class TherapistActions:
    """Add, enrol and log in a therapist through the real portal pages."""

    def __init__(self, client: FlaskClient, clock: Clock, database: Path) -> None:
        self.client = client
        self.clock = clock
        self.database = database
        self.secret = ""
        self.login_names: dict[str, str] = {}
        #: The passphrase each therapist was given, by name.
        self.passphrases: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def add(
        self,
        name: str = "Anna",
        languages: tuple[str, ...] = ("de", "en"),
        time_zone: str = "Europe/Berlin",
    ) -> str:
        """Add a therapist as the operator does; return the enrolment token."""
        db = connect(self.database)
        try:
            enrolment = add_therapist(db, name, languages, time_zone, int(self.clock()))
        finally:
            db.close()
        self.login_names[name] = enrolment.login_name
        self._names[enrolment.token] = name
        return enrolment.token

    def expect(self, name: str, login_name: str, token: str) -> None:
        """Know an account the operator added elsewhere (with the CLI), for enrol and login."""
        self.login_names[name] = login_name
        self._names[token] = name

    def code(self) -> str:
        """Return a TOTP code of a fresh time step (each code works only once)."""
        self.clock.advance(30)
        return pyotp.TOTP(self.secret).at(self.clock())

    def enrol(self, token: str, confirm: str | None = None, lang: str = "en"):
        """Take the passphrase the page shows (type back ``confirm`` instead, if given)."""
        html = self.client.get(f"/{lang}/enrol/{token}").get_data(as_text=True)
        self.secret = TOTP_SECRET.search(html).group(1).replace(" ", "")  # type: ignore[union-attr]
        passphrase = shown_passphrase(html)
        response = self.client.post(
            f"/{lang}/enrol/{token}",
            data={
                **form_fields(html),
                "confirm": passphrase if confirm is None else confirm,
                "code": pyotp.TOTP(self.secret).at(self.clock()),
            },
        )
        if response.status_code == 302:
            self.passphrases[self._names.get(token, "Anna")] = passphrase
        return response

    def create(
        self,
        name: str = "Anna",
        languages: tuple[str, ...] = ("de", "en"),
        time_zone: str = "Europe/Berlin",
    ) -> None:
        """Add and enrol a therapist; the browser ends up logged in."""
        response = self.enrol(self.add(name, languages, time_zone))
        assert response.status_code == 302, response.get_data(as_text=True)

    def login(self, name: str = "Anna", passphrase: str | None = None, code: str | None = None):
        html = self.client.get("/en/login").get_data(as_text=True)
        return self.client.post(
            "/en/login",
            data={
                **form_fields(html),
                "name": self.login_names.get(name, name),
                "passphrase": self.passphrases.get(name, "") if passphrase is None else passphrase,
                "code": self.code() if code is None else code,
            },
        )

    def change_passphrase(self, current: str | None = None, name: str = "Anna"):
        """Take a new passphrase on the portal's page; return the response and the new one."""
        html = self.client.get("/en/passphrase").get_data(as_text=True)
        new = shown_passphrase(html)
        response = self.client.post(
            "/en/passphrase",
            data={
                **form_fields(html),
                "current": self.passphrases[name] if current is None else current,
                "confirm": new,
            },
        )
        if response.status_code == 302:
            self.passphrases[name] = new
        return response, new

    def post(self, path: str, data: dict[str, str] | None = None, page: str | None = None):
        html = self.client.get(page or path).get_data(as_text=True)
        return self.client.post(path, data={**form_fields(html), **(data or {})})

    def logout(self):
        response = self.post("/en/logout", page="/en/")
        assert response.status_code == 302
        return response

    def publish(
        self,
        date: str,
        time: str,
        duration: str = "50",
        weeks: str = "1",
        languages: tuple[str, ...] = ("de", "en"),
    ):
        return self.post(
            "/en/availability",
            {
                "date": date,
                "time": time,
                "duration": duration,
                "weeks": weeks,
                "languages": list(languages),
            },  # type: ignore[dict-item]
        )


def add_therapist_by_cli(data_dir: Path, name: str, languages: str = "en,de") -> tuple[str, str]:
    """Run ``stillroom therapist add`` as the operator does; return (login name, token)."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("stillroom")),
            "therapist",
            "add",
            "--name",
            name,
            "--languages",
            languages,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": str(data_dir)},
    )
    login = re.search(r"Login name \(not shown to participants\): (\S+)", result.stdout)
    token = result.stdout.strip().rsplit("/", 1)[1]
    return login.group(1), token  # type: ignore[union-attr]


def add_researcher_by_cli(data_dir: Path, name: str) -> tuple[str, str]:
    """Run ``stillroom researcher add`` as the operator does; return (login name, token)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("stillroom")), "researcher", "add", "--name", name],
        capture_output=True,
        text=True,
        timeout=120,
        env=stillroom_env(data_dir, 0),
        check=True,
    )
    login = re.search(r"Login name[^:]*: (\S+)", result.stdout)
    token = result.stdout.strip().rsplit("/", 1)[1]
    return login.group(1), token  # type: ignore[union-attr]


def free_port(other_than: int = 0) -> int:
    """Return a port free now on 127.0.0.1, never ``other_than`` (the kernel may hand the
    same free port out twice in a row, and both apps on one port are refused)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != other_than:
            return port


@dataclass
class LiveServer:
    url: str
    portal_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Return everything the server printed so far."""
        return self.log.read_text(errors="replace")


def stillroom_env(data_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a real ``stillroom`` process: fast argon2, unbuffered.

    The portal gets a free port of its own, so that servers of parallel tests never meet.
    """
    return {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "PYTHONUNBUFFERED": "1",
        "STILLROOM_DATA_DIR": str(data_dir),
        "STILLROOM_PARTICIPANT_PORT": str(port),
        "STILLROOM_PORTAL_PORT": str(free_port(other_than=port)),
        **argon2_env(FAST_FOR_TESTS),
        **{f"STILLROOM_{name.upper()}": str(value) for name, value in NO_INTAKE_LIMITS.items()},
        **(extra or {}),
    }


class CountingEmbedder:
    """The real model, counting the texts it is asked to embed."""

    def __init__(self, real: Embedder) -> None:
        self.name = real.name
        self.real = real
        self.passage_count = 0
        self.query_count = 0

    def queries(self, texts: Sequence[str]) -> numpy.ndarray:
        self.query_count += len(texts)
        return self.real.queries(texts)

    def passages(self, texts: Sequence[str]) -> numpy.ndarray:
        self.passage_count += len(texts)
        return self.real.passages(texts)


def seed_vectors(data_dir: Path, vectors: Path) -> None:
    """Copy the run's cached vectors (the ``vector_cache`` fixture) into ``data_dir``, so
    that a portal started on it embeds nothing of the example library or built-in phrases.

    A copy, not the folder itself: a test may damage or count its own cache freely.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for cache in vectors.iterdir():
        shutil.copytree(cache, data_dir / cache.name, dirs_exist_ok=True)


def start_server(
    data_dir: Path, extra_env: dict[str, str] | None = None, vectors: Path | None = None
) -> LiveServer:
    """Start ``stillroom serve --no-tor`` as a real process and wait until it answers.

    With ``vectors`` (the ``vector_cache`` fixture), therapist support starts from them.
    """
    if vectors is not None:
        seed_vectors(data_dir, vectors)
    port = free_port()
    env = stillroom_env(data_dir, port, extra_env)
    stillroom = Path(sys.executable).with_name("stillroom")
    log = data_dir.parent / f"server-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(stillroom), "serve", "--no-tor"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    portal = f"http://127.0.0.1:{env['STILLROOM_PORTAL_PORT']}"
    server = LiveServer(f"http://127.0.0.1:{port}", portal, data_dir, process, log)
    # Therapist support embeds its library and phrases at start-up unless they are cached.
    wait = 180 if env.get("STILLROOM_ASSIST") else 30
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {server.output()}")
        try:
            for url in (server.url, server.portal_url):
                urllib.request.urlopen(f"{url}/", timeout=1).close()
            if env.get("STILLROOM_ASSIST"):  # and support's own process listens
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(data_dir / "assist-worker.sock"))
            return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not answer within {wait} s")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@dataclass
class Exchange:
    """One HTTP response as it crossed the wire: its request line, status and size."""

    request: str
    status: int
    size: int


class RecordingRelay:
    """A TCP relay on 127.0.0.1 that records every HTTP response it passes on.

    It sits between a browser and a real server, so a test can see what crossed the
    wire (status codes and exact sizes) without the server logging anything. After a
    ``101`` it passes the WebSocket's frames on unread. With ``refuse_websockets`` it
    drops every connection that asks for a WebSocket, as a proxy without them would,
    and lists the request lines it dropped in :attr:`refused`.
    """

    def __init__(self, upstream_port: int, refuse_websockets: bool = False) -> None:
        self.upstream_port = upstream_port
        self.refuse_websockets = refuse_websockets
        self.exchanges: list[Exchange] = []
        self.refused: list[str] = []
        #: WebSockets that were opened (``101``) and have since closed.
        self.sockets_closed = 0
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            requests: list[str] = []
            threading.Thread(
                target=self._pump_requests, args=(client, upstream, requests), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_responses, args=(upstream, client, requests), daemon=True
            ).start()

    def _pump_requests(
        self, source: socket.socket, target: socket.socket, requests: list[str]
    ) -> None:
        buffer = b""
        try:
            while chunk := source.recv(65536):
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    body_length = int(length.group(1)) if length else 0
                    while len(buffer) < body_length and (more := source.recv(65536)):
                        chunk += more
                        buffer += more
                    buffer = buffer[body_length:]
                    line = head.split(b"\r\n", 1)[0].decode("latin-1")
                    if self.refuse_websockets and b"upgrade: websocket" in head.lower():
                        with self._lock:
                            self.refused.append(line)
                        source.close()  # and the server's side below: the socket fails
                        return
                    requests.append(line)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def _pump_responses(
        self, source: socket.socket, target: socket.socket, requests: list[str]
    ) -> None:
        buffer = b""
        answered = 0
        upgraded = False
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
                if upgraded:
                    continue  # WebSocket frames, not HTTP
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    body_length = int(length.group(1)) if length else 0
                    if len(rest) < body_length:
                        break
                    status = int(head.split(b" ", 2)[1])
                    request = requests[answered] if answered < len(requests) else "?"
                    answered += 1
                    with self._lock:
                        self.exchanges.append(
                            Exchange(request, status, len(head) + 4 + body_length)
                        )
                    buffer = rest[body_length:]
                    if status == 101:
                        upgraded = True
                        break
        except OSError:
            pass
        finally:
            if upgraded:
                with self._lock:
                    self.sockets_closed += 1
            with contextlib.suppress(OSError):
                target.close()
                source.close()

    def responses_to(self, path_part: str) -> list[Exchange]:
        """Return the recorded responses to requests whose line contains ``path_part``."""
        with self._lock:
            return [item for item in self.exchanges if path_part in item.request]

    def close(self) -> None:
        self._stop.set()
        self._server.close()


SLOT = re.compile(r"name=slot value=([0-9a-f]+)")
#: Monday 18 January 2027, 18:00-18:50 in Berlin (17:00-17:50 UTC).
STARTS = int(datetime(2027, 1, 18, 17, 0, tzinfo=UTC).timestamp())
ENDS = STARTS + 50 * 60


def rows(settings, sql: str, args=()) -> list[tuple]:
    db = connect(settings.database_path)
    try:
        return db.execute(sql, list(args)).fetchall()
    finally:
        db.close()


class Chat:
    """A booked appointment with a participant and a therapist, both logged in."""

    def __init__(self, therapist, auth, clock, settings) -> None:
        self.therapist, self.auth, self.clock, self.settings = therapist, auth, clock, settings
        therapist.create()
        assert therapist.publish("2027-01-18", "18:00").status_code == 302
        self.passphrase = auth.create()
        [slot] = SLOT.findall(auth.client.get("/en/book").get_data(as_text=True))
        assert auth.post("/book", {"slot": slot}, page="/book").status_code == 302
        [[self.id]] = rows(settings, "SELECT id FROM appointments")

    def at(self, moment: int) -> None:
        """Move the clock and log both sides in again (sessions time out over days)."""
        self.clock.now = moment
        self.auth.client.delete_cookie("stillroom", domain="127.0.0.1")
        assert self.auth.login(self.passphrase).status_code == 302
        self.therapist.client.delete_cookie("stillroom_portal", domain="127.0.0.1")
        assert self.therapist.login().status_code == 302

    def say(self, who: str, text: str):
        client = self.auth.client if who == "participant" else self.therapist.client
        # Any page's token fits this session's forms (the compose frame has no form when closed).
        html = client.get("/en/account" if who == "participant" else "/en/").get_data(as_text=True)
        path = f"/en/chat/{self.id}/compose"
        return client.post(path, data={**form_fields(html), "text": text})

    def feed(self, who: str, query: str = "", **headers):
        """Load one side's feed frame, or its variant ``query`` (``live=1``, ``pause=1``)."""
        client = self.auth.client if who == "participant" else self.therapist.client
        return client.get(f"/en/chat/{self.id}/feed{'?' if query else ''}{query}", headers=headers)


def generated(examples: int) -> Any:
    """Hypothesis's settings for these runs: repeatable, no example database, no deadline.

    The world (a booked chat, two sessions) is made once per test and shared by its
    examples, on purpose: building it per example would cost more than the requests.
    """
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            hypothesis.HealthCheck.function_scoped_fixture,
            hypothesis.HealthCheck.too_slow,
        ],
    )
