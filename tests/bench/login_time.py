"""Time a login with production argon2id parameters, through the real server.

Starts ``stillroom serve --no-tor`` with the production argon2id costs (64 MiB,
t=3, p=4), creates an account through the real form, then logs in ``--rounds``
times and prints each time and, last, ``login_seconds_median=S``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/login_time.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support.py
from stillroom.crypto.kdf import PRODUCTION

from support import FORM_TOKEN, PASSPHRASE, PENDING, start_server, stop_server

PRODUCTION_ENV = {
    "STILLROOM_ARGON2_TIME_COST": str(PRODUCTION.time_cost),
    "STILLROOM_ARGON2_MEMORY_KIB": str(PRODUCTION.memory_kib),
    "STILLROOM_ARGON2_PARALLELISM": str(PRODUCTION.parallelism),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "instance", PRODUCTION_ENV)
        try:
            opener = urllib.request.build_opener(
                urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
            )
            page = opener.open(f"{server.url}/en/create", timeout=30).read().decode()
            passphrase = PASSPHRASE.search(page).group(1)  # type: ignore[union-attr]
            form = {
                "form_token": FORM_TOKEN.search(page).group(1),  # type: ignore[union-attr]
                "pending": PENDING.search(page).group(1),  # type: ignore[union-attr]
                "confirm": passphrase,
            }
            started = time.perf_counter()
            opener.open(f"{server.url}/en/create", urllib.parse.urlencode(form).encode())
            print(f"create_account_seconds={time.perf_counter() - started:.3f}")
            times = []
            for _ in range(args.rounds):
                logout_page = opener.open(f"{server.url}/en/account", timeout=30).read().decode()
                token = FORM_TOKEN.search(logout_page).group(1)  # type: ignore[union-attr]
                opener.open(
                    f"{server.url}/en/logout",
                    urllib.parse.urlencode({"form_token": token}).encode(),
                )
                login = opener.open(f"{server.url}/en/login", timeout=30).read().decode()
                fields = {
                    "form_token": FORM_TOKEN.search(login).group(1),  # type: ignore[union-attr]
                    "passphrase": passphrase,
                }
                started = time.perf_counter()
                landed = opener.open(
                    f"{server.url}/en/login", urllib.parse.urlencode(fields).encode(), timeout=30
                ).geturl()
                times.append(time.perf_counter() - started)
                assert landed.endswith("/en/account"), landed
                print(f"login {len(times)}: {times[-1]:.3f} s")
        finally:
            stop_server(server)
    print(f"login_seconds_median={statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
