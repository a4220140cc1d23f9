"""Time a login with production argon2id parameters, through the real server.

Starts ``stillroom serve --no-tor`` with the production argon2id costs (64 MiB,
t=3, p=4), creates an account through the real form, then logs in ``--rounds``
times and prints each time and ``login_seconds_median=S``. Then a therapist
enrols on the portal and logs in ``--portal-rounds`` times (the passphrase unwraps
the key and the TOTP secret: one argon2id run); each login needs a fresh 30-second TOTP step,
so the script waits for one. Last line: ``portal_login_seconds_median=S``.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/login_time.py [--rounds 9] [--portal-rounds 3]
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
import pyotp

from stillroom.crypto.kdf import PRODUCTION

from support import (
    FORM_TOKEN,
    PASSPHRASE,
    PENDING,
    TOTP_SECRET,
    LiveServer,
    add_therapist_by_cli,
    start_server,
    stop_server,
)

PRODUCTION_ENV = {
    "STILLROOM_ARGON2_TIME_COST": str(PRODUCTION.time_cost),
    "STILLROOM_ARGON2_MEMORY_KIB": str(PRODUCTION.memory_kib),
    "STILLROOM_ARGON2_PARALLELISM": str(PRODUCTION.parallelism),
}


def time_portal_logins(server: LiveServer, rounds: int) -> list[float]:
    """Enrol a therapist through the real portal pages, then time ``rounds`` logins."""
    login_name, token = add_therapist_by_cli(server.data_dir, "Bench")
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    enrol_url = f"{server.portal_url}/en/enrol/{token}"
    page = opener.open(enrol_url, timeout=30).read().decode()
    totp = pyotp.TOTP(TOTP_SECRET.search(page).group(1).replace(" ", ""))  # type: ignore[union-attr]
    passphrase = PASSPHRASE.search(page).group(1)  # type: ignore[union-attr]
    form = {
        "form_token": FORM_TOKEN.search(page).group(1),  # type: ignore[union-attr]
        "pending": PENDING.search(page).group(1),  # type: ignore[union-attr]
        "confirm": passphrase,
        "code": totp.now(),
    }
    step = int(time.time()) // 30
    opener.open(enrol_url, urllib.parse.urlencode(form).encode(), timeout=30)
    times = []
    for _ in range(rounds):
        home = opener.open(f"{server.portal_url}/en/", timeout=30).read().decode()
        logout = {"form_token": FORM_TOKEN.search(home).group(1)}  # type: ignore[union-attr]
        opener.open(f"{server.portal_url}/en/logout", urllib.parse.urlencode(logout).encode())
        while int(time.time()) // 30 <= step:  # each code works once: wait for the next step
            time.sleep(0.5)
        step = int(time.time()) // 30
        login = opener.open(f"{server.portal_url}/en/login", timeout=30).read().decode()
        fields = {
            "form_token": FORM_TOKEN.search(login).group(1),  # type: ignore[union-attr]
            "name": login_name,
            "passphrase": passphrase,
            "code": totp.now(),
        }
        started = time.perf_counter()
        landed = opener.open(
            f"{server.portal_url}/en/login", urllib.parse.urlencode(fields).encode(), timeout=30
        ).geturl()
        times.append(time.perf_counter() - started)
        assert landed.endswith("/en/"), landed
        print(f"portal login {len(times)}: {times[-1]:.3f} s")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--portal-rounds", type=int, default=3)
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
            print(f"login_seconds_median={statistics.median(times):.3f}")
            portal_times = time_portal_logins(server, args.portal_rounds)
        finally:
            stop_server(server)
    print(f"portal_login_seconds_median={statistics.median(portal_times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
