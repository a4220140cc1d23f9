"""Weigh every participant page, as sent by the real server, in every language.

Starts ``stillroom serve --no-tor`` (the production WSGI server) on 127.0.0.1,
logs in through the real forms, and counts the bytes of each response: status
line, headers and body, plus the stylesheet that every page loads once (asked for
as Tor Browser asks, with ``Accept-Encoding: gzip, deflate, br``). The
booking page is weighed with a busy schedule: three therapists offering
twenty times each in every language over the next four weeks. Prints one line
per page and, last, ``max_page_bytes=N``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/page_weight.py [--previous OLD.txt]

With ``--previous`` it also prints the change against an earlier run's output.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.py
import pyotp

from stillroom.crypto.kdf import KeyDeriver
from stillroom.crypto.passphrase import generate_passphrase
from stillroom.webapp.booking import publish_slots
from stillroom.webapp.instance import prepare_instance
from stillroom.webapp.settings import LANGUAGES, Settings
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import add_therapist, enrol, find_by_name, new_totp_secret

from support import (
    FAST_ARGON2,
    FORM_TOKEN,
    PASSPHRASE,
    PENDING,
    start_server,
    stop_server,
)

PUBLIC = ["/", "/create", "/login", "/help", "/privacy", "/no-such-page"]
PRIVATE = ["/account", "/book", "/account/passphrase", "/account/delete"]
THERAPISTS = 3
SLOTS_EACH = 20
BUDGET = 8 * 1024


def raw_get(base: str, path: str, cookie: str | None = None) -> bytes:
    """Return the whole HTTP response to a GET, exactly as it crossed the socket."""
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    request += "Accept-Encoding: gzip, deflate, br\r\n"  # as Tor Browser sends it
    if cookie:
        request += f"Cookie: {cookie}\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((request + "\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def log_in(base: str, lang: str) -> str:
    """Create an account through the real form and return the session cookie."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/{lang}/create", timeout=10).read().decode()
    form = {
        "form_token": FORM_TOKEN.search(page).group(1),  # type: ignore[union-attr]
        "pending": PENDING.search(page).group(1),  # type: ignore[union-attr]
        "confirm": PASSPHRASE.search(page).group(1),  # type: ignore[union-attr]
    }
    opener.open(f"{base}/{lang}/create", urllib.parse.urlencode(form).encode(), timeout=10)
    return next(f"{c.name}={c.value}" for c in jar)


def weigh(base: str) -> dict[str, int]:
    """Return ``{"lang path": bytes}`` for every page, stylesheet included."""
    home = raw_get(base, "/en/").decode()
    stylesheet = re.search(r'href="(/static/[^"]+\.css)"', home).group(1)  # type: ignore[union-attr]
    css_bytes = len(raw_get(base, stylesheet))
    print(f"stylesheet {stylesheet} {css_bytes} bytes (counted with every page)")
    weights = {"- /": len(raw_get(base, "/")) + css_bytes}
    for lang in LANGUAGES:
        for path in PUBLIC:
            weights[f"{lang} {path}"] = len(raw_get(base, f"/{lang}{path}")) + css_bytes
        cookie = log_in(base, lang)
        for path in PRIVATE:
            response = raw_get(base, f"/{lang}{path}", cookie)
            assert response.startswith(b"HTTP/1.1 200"), (lang, path, response[:80])
            if path == "/book":
                assert response.count(b"name=slot") >= 10, "the busy week is not on the page"
            weights[f"{lang} {path}"] = len(response) + css_bytes
    return weights


def publish_busy_schedule(data_dir: Path) -> int:
    """Have three enrolled therapists offer twenty times each over four weeks; return the count."""
    settings = Settings.load({}, data_dir=data_dir, **FAST_ARGON2)
    prepare_instance(settings)
    deriver = KeyDeriver(settings.argon2, 1, 5)
    db = connect(settings.database_path)
    try:
        first = (int(time.time()) // 3600 + 48) * 3600
        for number in range(THERAPISTS):
            name = f"Therapist {number + 1}"
            now = int(time.time())
            enrolment = add_therapist(db, name, LANGUAGES, "Europe/Berlin", now)
            secret = new_totp_secret()
            code = pyotp.TOTP(secret).now()
            passphrase = generate_passphrase(LANGUAGES[0])
            enrol(db, deriver, enrolment.token, passphrase, secret, code, now)
            therapist = find_by_name(db, name)
            starts = [first + number * 3600 + slot * 26 * 3600 for slot in range(SLOTS_EACH)]
            for start in starts:
                publish_slots(db, therapist.id, [start], 50, LANGUAGES, LANGUAGES, int(time.time()))
    finally:
        db.close()
    return THERAPISTS * SLOTS_EACH


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--previous", type=Path, help="an earlier run's output to compare with")
    args = parser.parse_args()
    previous: dict[str, int] = {}
    if args.previous:
        for line in args.previous.read_text().splitlines():
            match = re.fullmatch(r"(\S+ \S+)\s+(\d+)\b.*", line)
            if match:
                previous[match.group(1)] = int(match.group(2))
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "instance")
        try:
            print(f"booking page lists {publish_busy_schedule(server.data_dir)} free times")
            weights = weigh(server.url)
        finally:
            stop_server(server)
    for name, size in weights.items():
        change = f" ({size - previous[name]:+d})" if name in previous else ""
        flag = "" if size <= BUDGET else "  OVER BUDGET"
        print(f"{name:28} {size}{change}{flag}")
    print(f"max_page_bytes={max(weights.values())}")
    return 0 if max(weights.values()) <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
