"""Many real HTTP clients for a live ``stillroom serve``: pairs that chat, keep-alive connections.

Shared by the benchmarks in ``bench/`` and the crash test. Accounts are made in this
process before the server starts, with whatever argon2 costs the environment sets, so
that setting up thousands takes seconds.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyotp

from stillroom.crypto.passphrase import generate_passphrase
from stillroom.webapp import accounts, booking, therapists
from stillroom.webapp.app import create_participant_app
from stillroom.webapp.settings import Settings
from stillroom.webapp.store import connect

from support import FORM_TOKEN

#: A request unanswered for this long fails the run (a full server must not hang it).
REQUEST_TIMEOUT = 30


@dataclass
class Chat:
    """One participant-therapist pair with an open appointment."""

    appointment: str
    passphrase: str
    login_name: str
    therapist_passphrase: str
    totp_secret: str
    enrolled_at: int
    #: The TOTP step of the therapist's last login: the portal takes no code twice.
    totp_step: int = 0
    participant_cookie: str = ""
    therapist_cookie: str = ""
    participant_token: str = ""
    therapist_token: str = ""


def create_accounts(count: int) -> list[str]:
    """Make ``count`` accounts with the production costs; return their passphrases."""
    settings = Settings.load()
    app = create_participant_app(settings)
    db = connect(settings.database_path)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    passphrases = [generate_passphrase("en") for _ in range(count)]
    try:
        for passphrase in passphrases:
            accounts.create_account(
                db, app.config["KEY_DERIVER"], app.config["LOOKUP_KEY"], passphrase, today
            )
    finally:
        db.close()
    return passphrases


def create_chats(count: int, settings: Settings) -> list[Chat]:
    """Make ``count`` therapists and participants and book each pair a time open now."""
    app = create_participant_app(settings)  # prepares the instance; lends its keys
    deriver, lookup_key = app.config["KEY_DERIVER"], app.config["LOOKUP_KEY"]
    db = connect(settings.database_path)
    now = int(time.time())
    start = (now // 60 + 70) * 60  # bookable (an hour ahead); its chat opens 120 min before
    chats = []
    for number in range(count):
        enrolment = therapists.add_therapist(
            db, f"Therapist {number}", ("en",), "Europe/Berlin", now
        )
        secret = pyotp.random_base32()
        therapist_passphrase = generate_passphrase("en")
        therapist_id, _ = therapists.enrol(
            db,
            deriver,
            enrolment.token,
            therapist_passphrase,
            secret,
            pyotp.TOTP(secret).at(now),
            now,
        )
        (slot,) = booking.publish_slots(db, therapist_id, [start], 50, ("en",), ("en",), now)
        passphrase = generate_passphrase("en")
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
        account = accounts.create_account(db, deriver, lookup_key, passphrase, today)
        appointment = booking.book(db, account.participant_id, slot, "en", now, 1, 0)
        chats.append(
            Chat(appointment, passphrase, enrolment.login_name, therapist_passphrase, secret, now)
        )
    db.close()
    return chats


class Connection:
    """One keep-alive HTTP/1.1 connection, as a browser holds it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        cookie: str = "",
        form: dict[str, str] | None = None,
        etag: str = "",
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read the whole answer; reconnect if the server closed.

        ``timeout`` is longer for a feed reload the server may hold until news comes.
        """
        body = urllib.parse.urlencode(form).encode() if form is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        head += ["Sec-Fetch-Site: same-origin", "Accept-Encoding: gzip, deflate"]
        if cookie:
            head.append(f"Cookie: {cookie}")
        if etag:
            head.append(f"If-None-Match: {etag}")
        if form is not None:
            head.append("Content-Type: application/x-www-form-urlencoded")
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        try:
            return await asyncio.wait_for(self._exchange(raw), timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection; a later request opens a new one."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            try:
                self.writer.write(raw)
                answer = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            lines = answer.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers.setdefault(name.strip().lower(), value.strip())
            length = int(headers.get("content-length", "0"))
            content = await self.reader.readexactly(length) if length else b""
            if headers.get("content-encoding") == "gzip":
                content = gzip.decompress(content)
            if headers.get("connection", "").lower() == "close":
                self.close()
            return int(lines[0].split(" ", 2)[1]), headers, content
        raise AssertionError("unreachable")


def session_cookie(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


def form_token(content: bytes) -> str:
    match = FORM_TOKEN.search(content.decode())
    assert match is not None, content[:300]
    return match.group(1)


async def log_in(chat: Chat, participant_port: int, portal_port: int) -> None:
    """Log both sides of ``chat`` in through the real forms; keep cookies and form tokens."""
    door = Connection(participant_port)
    _, _, page = await door.request("GET", "/en/login")
    status, headers, _ = await door.request(
        "POST", "/en/login", form={"form_token": form_token(page), "passphrase": chat.passphrase}
    )
    assert status == 302, status
    chat.participant_cookie = session_cookie(headers)
    _, _, page = await door.request(
        "GET", f"/en/chat/{chat.appointment}/compose", chat.participant_cookie
    )
    chat.participant_token = form_token(page)
    door.close()
    await log_in_therapist(chat, portal_port)


async def log_in_therapist(chat: Chat, portal_port: int, where: str = "/compose") -> None:
    """Log the therapist of ``chat`` in through the portal's form (name, passphrase, TOTP).

    The form token is read from the chat's page ``where`` (the chat page once it closed).
    """
    portal = Connection(portal_port)
    _, _, page = await portal.request("GET", "/en/login")
    # The portal accepts the steps next to now, each once, and none up to enrolment's:
    # now's if it is free, as a phone would show it, else the next.
    seconds = therapists.TOTP_STEP_SECONDS
    step = max(int(time.time()) // seconds, chat.enrolled_at // seconds + 1, chat.totp_step + 1)
    chat.totp_step = step
    await asyncio.sleep(max(0.0, (step - 1) * seconds - time.time()))
    code = pyotp.TOTP(chat.totp_secret).generate_otp(step)
    status, headers, _ = await portal.request(
        "POST",
        "/en/login",
        form={
            "form_token": form_token(page),
            "name": chat.login_name,
            "passphrase": chat.therapist_passphrase,
            "code": code,
        },
    )
    assert status == 302, status
    chat.therapist_cookie = session_cookie(headers)
    _, _, page = await portal.request(
        "GET", f"/en/chat/{chat.appointment}{where}", chat.therapist_cookie
    )
    chat.therapist_token = form_token(page)
    portal.close()


async def log_in_all(chats: list[Chat], participant_port: int, portal_port: int) -> None:
    """Log every pair in, a few at a time (the server's argon2 slots are few)."""
    queue = list(chats)

    async def worker() -> None:
        while queue:
            await log_in(queue.pop(), participant_port, portal_port)

    await asyncio.gather(*(worker() for _ in range(4)))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
