"""Participant logins while eight loops make accounts as fast as they can: login latency.

Starts ``stillroom serve --no-tor`` with the production argon2id costs (64 MiB, t=3, p=4)
and the default limits on account creation (its own argon2 slot, ``--rate`` accounts a
minute for everyone together), then:

* times ``--baseline`` logins one after another on the idle server;
* starts ``--loops`` loops, each of which fetches the create page and sends the
  confirmation back at once, again and again, for ``--seconds``;
* meanwhile logs in one after another every ``--interval`` seconds with a real
  passphrase and times each login, from the POST of the form to the redirect.

The login accounts are made in this process beforehand, with the same production costs.
Prints the figures and, last,
``logins=N login_p50_ms=X login_p99_ms=X baseline_p99_ms=X created=N busy=N other=N``.
The goal is ``login_p99_ms`` of 250 or less.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/intake_flood.py [--rate 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the helpers

from loadclients import Connection, create_accounts, form_token, percentile

from stillroom.crypto.kdf import PRODUCTION
from stillroom.webapp.settings import Settings

from support import PASSPHRASE, PENDING, argon2_env, start_server, stop_server


async def one_login(port: int, passphrase: str) -> tuple[int, float]:
    """Log in once through the form on a new connection; return the status and seconds."""
    connection = Connection(port)
    _, _, page = await connection.request("GET", "/en/login")
    started = time.monotonic()
    status, _, _ = await connection.request(
        "POST", "/en/login", form={"form_token": form_token(page), "passphrase": passphrase}
    )
    seconds = time.monotonic() - started
    connection.close()
    return status, seconds


async def creator(port: int, stop: float, statuses: list[int]) -> None:
    """Make accounts through the real form, one after another, until ``stop``."""
    connection = Connection(port)
    while time.monotonic() < stop:
        _, _, page = await connection.request("GET", "/en/create")
        html = page.decode()
        shown, pending = PASSPHRASE.search(html), PENDING.search(html)
        assert shown is not None and pending is not None, html[:300]
        status, _, _ = await connection.request(
            "POST",
            "/en/create",
            form={
                "form_token": form_token(page),
                "pending": pending.group(1),
                "confirm": shown.group(1),
            },
        )
        statuses.append(status)
        if status == 302:  # logged in now: a fresh connection carries no cookie
            connection.close()
    connection.close()


async def flood(port: int, passphrases: list[str], args: argparse.Namespace) -> dict:
    baseline = []
    for number in range(args.baseline):
        status, seconds = await one_login(port, passphrases[number % len(passphrases)])
        assert status == 302, status
        baseline.append(seconds)
    stop = time.monotonic() + args.seconds
    statuses: list[int] = []
    loops = [asyncio.ensure_future(creator(port, stop, statuses)) for _ in range(args.loops)]
    await asyncio.sleep(1.0)  # the loops are in their stride
    logins: list[tuple[int, float]] = []
    number = 0
    while time.monotonic() < stop:
        began = time.monotonic()
        logins.append(await one_login(port, passphrases[number % len(passphrases)]))
        number += 1
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - began)))
    await asyncio.gather(*loops)
    return {"baseline": baseline, "logins": logins, "statuses": statuses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--loops", type=int, default=8, help="loops making accounts")
    parser.add_argument("--rate", type=int, default=Settings.accounts_per_minute)
    parser.add_argument("--seconds", type=float, default=60, help="how long the flood lasts")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between logins")
    parser.add_argument("--baseline", type=int, default=20, help="logins before the flood")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "instance"
        os.environ["STILLROOM_DATA_DIR"] = str(data_dir)
        os.environ.update(argon2_env(PRODUCTION))
        passphrases = create_accounts(4)
        server = start_server(
            data_dir,
            {**argon2_env(PRODUCTION), "STILLROOM_ACCOUNTS_PER_MINUTE": str(args.rate)},
        )
        try:
            port = int(server.url.rsplit(":", 1)[1])
            found = asyncio.run(flood(port, passphrases, args))
        finally:
            stop_server(server)
    baseline_ms = [seconds * 1000 for seconds in found["baseline"]]
    during_ms = [seconds * 1000 for _, seconds in found["logins"]]
    failed = [status for status, _ in found["logins"] if status != 302]
    statuses = found["statuses"]
    created, busy = statuses.count(302), statuses.count(503)
    other = len(statuses) - created - busy
    print(
        f"idle server: {len(baseline_ms)} logins, p50 {percentile(baseline_ms, 0.5):.0f} ms,"
        f" p99 {percentile(baseline_ms, 0.99):.0f} ms"
    )
    print(
        f"{args.loops} loops making accounts for {args.seconds:.0f} s at a limit of"
        f" {args.rate} a minute: {len(statuses)} confirmations, {created} accounts made,"
        f" {busy} busy (503), {other} other"
    )
    print(
        f"during the flood: {len(during_ms)} logins ({len(failed)} not logged in: {failed}),"
        f" p50 {percentile(during_ms, 0.5):.0f} ms, p99 {percentile(during_ms, 0.99):.0f} ms,"
        f" max {max(during_ms, default=float('nan')):.0f} ms (goal: p99 at most 250 ms)"
    )
    print(
        f"logins={len(during_ms)} login_p50_ms={percentile(during_ms, 0.5):.0f}"
        f" login_p99_ms={percentile(during_ms, 0.99):.0f}"
        f" baseline_p99_ms={percentile(baseline_ms, 0.99):.0f}"
        f" created={created} busy={busy} other={other}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
