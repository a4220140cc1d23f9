"""Faults an operator meets: a full disk, a read-only database.

The server runs as ``stillroom serve --no-tor`` in a mount namespace of its own, with
its data directory on a small tmpfs (or bound read-only), so that nothing outside the
test sees the mount. Filling the disk and looking at the files happen inside that
namespace too (``nsenter``). These need root, as CI has; without it they fail.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loadclients import Chat, Connection, create_chats, log_in
from nacl.public import PrivateKey

from stillroom.crypto.stream import MAGIC
from stillroom.webapp.settings import Settings

from support import PASSPHRASE, form_fields, free_port, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
#: The calm sentences of a write that could not be saved (webapp/chatroom.py, security.py).
NOT_SENT = "could not be saved just now, so it was not sent"
NOTHING_CHANGED = "could not be saved just now, so nothing was changed"


@dataclass
class Namespaced:
    """A ``stillroom serve`` in its own mount namespace, and a way to run commands there."""

    process: subprocess.Popen[str]
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return Path(self.env["STILLROOM_DATA_DIR"])

    @property
    def ports(self) -> tuple[int, int]:
        return int(self.env["STILLROOM_PARTICIPANT_PORT"]), int(self.env["STILLROOM_PORTAL_PORT"])

    def inside(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the server's mount namespace, with the server's settings."""
        return subprocess.run(
            ["nsenter", f"--target={self.process.pid}", "--mount", "--", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            env=self.env,
        )

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """Run one SQL statement on the live database, inside the namespace."""
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " print(repr(c.execute(sys.argv[2]).fetchall()))"
        )
        database = str(self.data_dir / "stillroom.db")
        answer = self.inside(sys.executable, "-c", script, database, statement)
        return ast.literal_eval(answer.stdout)

    def output(self) -> str:
        """Stop the server (SIGTERM) and return everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return out


def start_namespaced(prepare: str, env: dict[str, str]) -> Namespaced:
    """Run the shell line ``prepare`` in a new mount namespace, then the server there."""
    for tool in ("unshare", "nsenter", "mount"):
        assert shutil.which(tool), f"{tool} (util-linux) is needed for the fault tests"
    assert os.geteuid() == 0, "the fault tests mount filesystems: run them as root (CI does)"
    script = f"set -e; {prepare}; exec {shlex.quote(STILLROOM)} serve --no-tor"
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Namespaced(process, env)


def wait_until_answering(server: Namespaced) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.output()
        try:
            if all(request(port, "GET", "/en/login")[0] == 200 for port in server.ports):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not answer within 30 s")


def request(
    port: int, method: str, path: str, cookie: str = "", form: dict[str, str] | None = None
) -> tuple[int, str]:
    """One request on a fresh connection; return the status and the page."""

    async def once() -> tuple[int, str]:
        connection = Connection(port)
        try:
            status, _, body = await connection.request(method, path, cookie, form)
        finally:
            connection.close()
        return status, body.decode()

    return asyncio.run(once())


def say(server: Namespaced, chat: Chat, text: str) -> tuple[int, str]:
    """Send ``text`` from the participant's side of ``chat``."""
    form = {"form_token": chat.participant_token, "text": text}
    compose = f"/en/chat/{chat.appointment}/compose"
    return request(server.ports[0], "POST", compose, chat.participant_cookie, form)


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Chat]]:
    """A data directory with one pair whose chat is open now, and the server's environment."""
    seed = tmp_path / "seed"
    env = stillroom_env(
        seed,
        free_port(),
        {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120", "STILLROOM_DISK_RESERVE_MIB": "1"},
    )
    (chat,) = create_chats(1, Settings.load(env))
    yield seed, env, chat


def start_on_small_disk(
    seed: Path, env: dict[str, str], data: Path, before: str = "true"
) -> Namespaced:
    """Serve a copy of ``seed`` from a 4 MiB tmpfs mounted at ``data``, once it answers.

    ``before`` is a shell line run on that disk before the server starts.
    """
    data.mkdir()
    on_tmpfs = (
        f"mount -t tmpfs -o size=4m,mode=0700 stillroom-test {data}; cp -a {seed}/. {data}/;"
        f" {before}"
    )
    server = start_namespaced(on_tmpfs, {**env, "STILLROOM_DATA_DIR": str(data)})
    try:
        wait_until_answering(server)
    except BaseException:
        server.process.kill()
        server.output()
        raise
    return server


def fill_the_disk(server: Namespaced) -> None:
    filled = server.inside(
        "dd", "if=/dev/zero", f"of={server.data_dir}/filler", "bs=64k", check=False
    )
    assert "No space left" in filled.stderr


def test_a_full_disk_refuses_writes_calmly_while_reading_and_purging_go_on(seeded, tmp_path):
    seed, env, chat = seeded
    data = tmp_path / "data"
    server = start_on_small_disk(seed, env, data)
    try:
        assert server.inside("du", "-k", f"{data}/reserve").stdout.split()[0] == "1024"
        asyncio.run(log_in(chat, *server.ports))
        assert say(server, chat, "Before the disk filled up.")[0] == 200
        server.sql(
            "INSERT INTO messages SELECT conversation_id, -1, envelope, '2000-01-01'"
            " FROM messages LIMIT 1"
        )
        fill_the_disk(server)
        for attempt in range(300):
            status, page = say(server, chat, f"Written on a full disk {attempt}.")
            if status != 200:
                break
        assert status == 503, page
        assert NOT_SENT in page and f"Written on a full disk {attempt}." in page, "text kept"
        form = {"form_token": chat.participant_token, "zone": "Europe/Athens"}
        status, page = request(
            server.ports[0], "POST", "/en/time-zone", chat.participant_cookie, form
        )
        assert status == 503 and NOTHING_CHANGED in page, "any other write: the calm page"
        feed = f"/en/chat/{chat.appointment}/history"
        status, page = request(server.ports[0], "GET", feed, chat.participant_cookie)
        assert status == 200 and "Before the disk filled up." in page, "reading goes on"
        status, page = request(server.ports[1], "GET", "/en/login")
        assert status == 200
        purged = server.inside(STILLROOM, "purge", check=False)
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert "gave back the reserve" in purged.stderr, "the purge ran on the reserve"
        assert server.sql("SELECT count(*) FROM messages WHERE expires_day < '2001-01-01'") == [
            (0,)
        ]
        assert server.sql("PRAGMA integrity_check") == [("ok",)]
        server.inside("rm", f"{data}/filler")
        status, page = say(server, chat, "After the operator freed space.")
        assert status == 200, page
        status, page = request(server.ports[0], "GET", feed, chat.participant_cookie)
        assert "After the operator freed space." in page
        assert f"Written on a full disk {attempt}." not in page, "a refused write left nothing"
    finally:
        output = server.output()
    assert "cannot be written: the disk is full" in output
    assert output.count("cannot be written") <= 2, "reported once a minute, not per request"
    assert "Traceback" not in output


def test_a_participant_can_delete_the_account_on_a_full_disk(seeded, tmp_path):
    """Deleting needs room in the log too: the reserve makes sure it goes."""
    seed, env, chat = seeded
    server = start_on_small_disk(seed, env, tmp_path / "data")
    try:
        asyncio.run(log_in(chat, *server.ports))
        assert say(server, chat, "Please forget me.")[0] == 200
        fill_the_disk(server)
        assert say(server, chat, "This one cannot be stored.")[0] == 503, "the disk is full"
        form = {"form_token": chat.participant_token}
        status, _ = request(
            server.ports[0], "POST", "/en/account/delete", chat.participant_cookie, form
        )
        assert status == 302
        assert server.sql("SELECT count(*) FROM participants") == [(0,)]
        assert server.sql("SELECT count(*) FROM messages") == [(0,)]
        assert server.sql("PRAGMA integrity_check") == [("ok",)]
    finally:
        output = server.output()
    assert "gave back the reserve to delete" in output
    assert "Traceback" not in output


def test_a_passphrase_change_on_a_full_disk_says_what_happened(seeded, tmp_path):
    """Whatever the disk allowed, the page told matches what opens the account afterwards."""
    seed, env, chat = seeded
    server = start_on_small_disk(seed, env, tmp_path / "data")
    try:
        asyncio.run(log_in(chat, *server.ports))
        cookie, port = chat.participant_cookie, server.ports[0]
        status, page = request(port, "GET", "/en/account/passphrase", cookie)
        new = PASSPHRASE.search(page).group(1)  # type: ignore[union-attr]
        fill_the_disk(server)
        form = {**form_fields(page), "current": chat.passphrase, "confirm": new}
        status, page = request(port, "POST", "/en/account/passphrase", cookie, form)
        changed = status == 302
        assert changed or (status == 503 and NOTHING_CHANGED in page), (status, page[:300])
        server.inside("rm", f"{server.data_dir}/filler")
        works, fails = (new, chat.passphrase) if changed else (chat.passphrase, new)
        for passphrase, expected in ((works, 302), (fails, 401)):
            _, login_page = request(port, "GET", "/en/login")
            form = {**form_fields(login_page), "passphrase": passphrase}
            assert request(port, "POST", "/en/login", form=form)[0] == expected
    finally:
        output = server.output()
    assert "Traceback" not in output


def test_logging_out_on_a_full_disk_ends_the_session(seeded, tmp_path):
    seed, env, chat = seeded
    server = start_on_small_disk(seed, env, tmp_path / "data")
    try:
        asyncio.run(log_in(chat, *server.ports))
        cookie, port = chat.participant_cookie, server.ports[0]
        fill_the_disk(server)
        assert say(server, chat, "Refused: the disk is full.")[0] == 503
        token = {"form_token": chat.participant_token}
        assert request(port, "POST", "/en/logout", cookie, token)[0] == 302
        assert request(port, "GET", "/en/account", cookie)[0] == 302, "the session is over"
        assert server.sql("SELECT count(*) FROM sessions") == [(0,)]
    finally:
        output = server.output()
    assert "Traceback" not in output


def test_serve_starts_again_on_a_full_disk(seeded, tmp_path):
    """A restart after the disk filled up: the reserve lets serve open, purge and read."""
    seed, env, _chat = seeded
    full = f"{STILLROOM} purge; dd if=/dev/zero of={tmp_path / 'data'}/filler bs=64k || true"
    server = start_on_small_disk(seed, env, tmp_path / "data", before=full)
    try:
        assert server.sql("PRAGMA integrity_check") == [("ok",)]
        assert request(server.ports[0], "GET", "/en/help")[0] == 200
    finally:
        output = server.output()
    assert "gave back the reserve" in output
    assert "Traceback" not in output


def test_a_read_only_database_stops_serve_with_the_operators_fix(seeded, tmp_path):
    """And the audit and a backup, which write nothing into the data directory, still work."""
    seed, env, _chat = seeded
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **env,
        "STILLROOM_BACKUP_PUBLIC_KEY": base64.b64encode(
            bytes(PrivateKey.generate().public_key)
        ).decode(),
    }
    read_only = (
        f"mount --bind {seed} {seed}; mount -o remount,bind,ro {seed};"
        f" {STILLROOM} audit > {out}/audit 2>&1 || echo exit $? >> {out}/audit;"
        f" {STILLROOM} backup {out}/backup > {out}/said 2>&1 || echo exit $? >> {out}/said"
    )
    server = start_namespaced(read_only, env)
    try:
        server.process.wait(timeout=60)
    finally:
        server.process.kill()
        output = server.output()
    assert server.process.returncode == 1
    assert f"{seed} cannot be written: it is read-only" in output
    assert "Mount its filesystem read-write and make the data directory" in output
    assert "Traceback" not in output
    audit = (out / "audit").read_text()
    assert "All checks hold." in audit and "exit" not in audit, audit
    said = (out / "said").read_text()
    assert said.startswith(f"Backup written to {out}/backup") and "exit" not in said, said
    assert (out / "backup").read_bytes().startswith(MAGIC)
