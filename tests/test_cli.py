"""The ``stillroom`` command, run as a real process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stillroom.webapp.settings import Settings, env_var
from stillroom.webapp.store import connect
from stillroom.webapp.therapists import therapists_at

from support import add_therapist_by_cli, free_port, stillroom_env

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONSAFEPATH": "1", **(env or {})},
    )


def test_help_describes_every_setting():
    for command in ([], ["serve"]):
        result = run(*command, "--help")
        assert result.returncode == 0
        for item in dataclasses.fields(Settings):
            assert env_var(item.name) in result.stdout, (command, item.name)


def test_readme_documents_every_setting():
    text = README.read_text()
    for item in dataclasses.fields(Settings):
        assert env_var(item.name) in text, item.name


def test_a_bad_setting_names_the_variable(tmp_path):
    result = run("serve", "--no-tor", env={"STILLROOM_PARTICIPANT_PORT": "eighty"})
    assert result.returncode == 2
    assert "STILLROOM_PARTICIPANT_PORT" in result.stderr


def listening_addresses(port: int) -> set[str]:
    """Return the local addresses that listen on ``port`` (from /proc, no traffic)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if int(port_hex, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_serve_runs_a_production_server_on_loopback_only(live_server):
    response = urllib.request.urlopen(f"{live_server.url}/en/", timeout=5)
    assert response.status == 200
    assert response.headers["Server"] is None
    assert "Werkzeug" not in str(response.headers)
    port = int(live_server.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 and nothing else


def test_serve_runs_the_portal_on_its_own_loopback_port(live_server):
    with urllib.request.urlopen(f"{live_server.portal_url}/en/login", timeout=5) as response:
        body = response.read().decode()
    assert response.status == 200
    assert 'name="code"' in body
    assert response.headers["Server"] is None
    port = int(live_server.portal_url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}
    assert f"Therapist portal: {live_server.portal_url}/" in live_server.output()


def test_no_answer_tells_the_hosts_clock(live_server):
    """No ``Date`` header: its skew, read over many answers, could single out the host."""
    answers = []
    for url in (f"{live_server.url}/en/", f"{live_server.portal_url}/en/login"):
        with urllib.request.urlopen(url, timeout=5) as response:
            answers.append(response.headers)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{live_server.url}/en/nothing-here", timeout=5)
    answers.append(missing.value.headers)
    missing.value.close()
    assert [headers["Date"] for headers in answers] == [None, None, None]


@pytest.mark.parametrize(
    ("base", "path"),
    [
        ("url", "/en/availability"),  # the portal's pages are not on the onion's port
        ("url", "/en/enrol/{token}"),
        ("url", "/en/passphrase"),
        ("portal_url", "/en/create"),  # and the participant's are not on the portal's
        ("portal_url", "/en/account"),
        ("portal_url", "/en/help"),
    ],
)
def test_each_port_serves_only_its_own_app(live_server, base, path):
    _, token = add_therapist_by_cli(live_server.data_dir, f"Port test {base}{len(path)}")
    path = path.format(token=token)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{getattr(live_server, base)}{path}", timeout=5)
    refused.value.close()
    assert refused.value.code == 404
    other = "portal_url" if base == "url" else "url"  # the same page is there, on its own port
    with urllib.request.urlopen(f"{getattr(live_server, other)}{path}", timeout=5) as page:
        assert page.status in (200, 302)


def therapist_env(tmp_path: Path) -> dict[str, str]:
    """An existing, empty data directory, as ``serve`` or the operator's ``mkdir`` leave it."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "STILLROOM_DATA_DIR": str(tmp_path / "data"),
        "STILLROOM_PORTAL_URL": "https://portal.example.org",
    }


def test_therapist_add_prints_a_one_time_enrolment_link(tmp_path):
    env = therapist_env(tmp_path)
    result = run("therapist", "add", "--name", "Anna", "--languages", "de,en", env=env)
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"https://portal\.example\.org/de/enrol/[A-Za-z0-9_-]{40,}", link)
    login = re.search(
        r"Login name \(not shown to participants\): ([a-z2-9]{4}-[a-z2-9]{4})\n", result.stdout
    )
    assert login, result.stdout
    listed = run("therapist", "list", env=env).stdout.splitlines()
    assert [line.split("\t") for line in listed] == [
        ["name", "login name", "languages", "time zone", "state", "site"],
        ["Anna", login.group(1), "de,en", "Europe/Berlin", "not enrolled", "-"],
    ]


def listed_sites(env: dict[str, str]) -> dict[str, str]:
    """Return each therapist's site as ``therapist list`` prints it, by name."""
    lines = run("therapist", "list", env=env).stdout.splitlines()
    header, *therapists = (line.split("\t") for line in lines)
    return {fields[0]: fields[header.index("site")] for fields in therapists}


def test_a_therapist_gets_a_site_keeps_it_and_can_move(tmp_path):
    env = therapist_env(tmp_path)
    added = run(
        "therapist", "add", "--name", "Jana", "--languages", "cs", "--site", "prague", env=env
    )
    assert added.returncode == 0, added.stderr
    assert run("therapist", "add", "--name", "Anna", "--languages", "de", env=env).returncode == 0
    assert listed_sites(env) == {"Anna": "-", "Jana": "prague"}
    moved = run("therapist", "site", "anna", "berlin", env=env)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == "Anna now belongs to site berlin; appointments already booked stay.\n"
    assert run("therapist", "site", "Jana", "--clear", env=env).returncode == 0
    assert listed_sites(env) == {"Anna": "berlin", "Jana": "-"}


@pytest.mark.parametrize(
    "args",
    [
        ["add", "--name", "Anna", "--languages", "de", "--site", "Berlin"],
        ["add", "--name", "Anna", "--languages", "de", "--site", "b"],
        ["add", "--name", "Anna", "--languages", "de", "--site", "x" * 31],
        ["site", "Bruno", "berlin mitte"],
        ["site", "Bruno"],
        ["site", "Bruno", "berlin", "--clear"],
    ],
)
def test_a_bad_site_is_refused_and_nothing_changes(tmp_path, args):
    env = therapist_env(tmp_path)
    added = run(
        "therapist", "add", "--name", "Bruno", "--languages", "de", "--site", "bonn", env=env
    )
    assert added.returncode == 0, added.stderr
    refused = run("therapist", *args, env=env)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert listed_sites(env) == {"Bruno": "bonn"}


def test_moving_a_therapist_nobody_has_is_one_line(tmp_path):
    refused = run("therapist", "site", "Nobody", "berlin", env=therapist_env(tmp_path))
    assert refused.returncode == 1
    assert refused.stderr == "Error: no therapist named 'Nobody'\n"


def test_the_therapists_of_a_language_and_site_are_those_who_can_take_bookings(tmp_path):
    env = therapist_env(tmp_path)
    for name, languages, site in [
        ("Anna", "de,en", "berlin"),
        ("Bruno", "de", "berlin"),
        ("Carla", "de", "munich"),
        ("Dora", "en", "berlin"),
        ("Emil", "de", ""),
    ]:
        extra = ["--site", site] if site else []
        added = run("therapist", "add", "--name", name, "--languages", languages, *extra, env=env)
        assert added.returncode == 0, added.stderr
    db = connect(tmp_path / "data" / "stillroom.db")
    try:
        db.execute("UPDATE therapists SET slot = rowid")  # as if all had enrolled
        assert run("therapist", "disable", "Bruno", env=env).returncode == 0
        assert [t.name for t in therapists_at(db, "de", "berlin")] == ["Anna"]
        assert [t.name for t in therapists_at(db, "en", "berlin")] == ["Anna", "Dora"]
        db.execute("UPDATE therapists SET slot = NULL WHERE name = 'Anna'")
        assert [t.name for t in therapists_at(db, "de", "berlin")] == []
        assert [t.name for t in therapists_at(db, "de", "munich")] == ["Carla"]
    finally:
        db.close()


@pytest.mark.parametrize(("again", "by"), [("Anna", ""), ("anna", " (by 'Anna')")])
def test_a_taken_name_is_refused_as_taken(tmp_path, again, by):
    env = therapist_env(tmp_path)
    assert run("therapist", "add", "--name", "Anna", "--languages", "de", env=env).returncode == 0
    refused = run("therapist", "add", "--name", again, "--languages", "en", env=env)
    assert refused.returncode == 1
    assert refused.stderr == f"Error: the name {again!r} is taken{by}; choose another\n"


def test_an_unknown_language_is_named(tmp_path):
    refused = run(
        "therapist", "add", "--name", "Anna", "--languages", "de,xx", env=therapist_env(tmp_path)
    )
    assert refused.returncode == 2
    assert "Stillroom does not speak xx:" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("look_alike", "why"),
    [
        ("\u0410nna", "a Cyrillic A"),
        ("\uff21\uff4e\uff4e\uff41", "fullwidth letters"),
        ("\u0391nna", "a Greek Alpha"),
        ("Anna\u200b", "a zero-width space (not plain text)"),
        ("An\u0578a", "an Armenian vo for the n"),
        ("Ann\u0251", "a Latin alpha"),
    ],
)
def test_a_name_that_looks_like_a_taken_one_is_refused(tmp_path, look_alike, why):
    env = therapist_env(tmp_path)
    assert run("therapist", "add", "--name", "Anna", "--languages", "en", env=env).returncode == 0
    refused = run("therapist", "add", "--name", look_alike, "--languages", "en", env=env)
    assert refused.returncode == 1, why
    assert refused.stderr.startswith("Error: the name ") and "Traceback" not in refused.stderr
    assert run("therapist", "list", env=env).stdout.count("\n") == 2, why  # header, Anna


def test_names_are_stored_nfkc_normalised(tmp_path):
    env = therapist_env(tmp_path)
    added = run(
        "therapist", "add", "--name", "Dr\uff0e Jana \ufb01sher", "--languages", "cs", env=env
    )
    assert added.returncode == 0, added.stderr
    assert run("therapist", "list", env=env).stdout.splitlines()[1].startswith("Dr. Jana fisher\t")
    different = run("therapist", "add", "--name", "Bruno", "--languages", "de", env=env)
    assert different.returncode == 0, "a name that only looks different is welcome"


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "Anna", "--languages", "fr"],
        ["--name", "Anna", "--languages", "de", "--time-zone", "Mars/Olympus"],
        ["--name", "", "--languages", "de"],
    ],
)
def test_therapist_add_refuses_bad_values(tmp_path, args):
    result = run("therapist", "add", *args, env=therapist_env(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_therapist_disable_and_reset(tmp_path):
    env = therapist_env(tmp_path)
    first = run("therapist", "add", "--name", "Anna", "--languages", "de", env=env).stdout
    disabled = run("therapist", "disable", "Anna", env=env)
    assert disabled.returncode == 0
    assert run("therapist", "list", env=env).stdout.split("\t")[-2] == "disabled"
    reset = run("therapist", "reset", "anna", env=env)
    assert reset.returncode == 0
    new_link = reset.stdout.strip().splitlines()[-1]
    assert "/de/enrol/" in new_link and new_link != first.strip().splitlines()[-1]
    assert run("therapist", "list", env=env).stdout.split("\t")[-2] == "not enrolled"
    assert run("therapist", "disable", "Nobody", env=env).returncode == 1


def test_serve_creates_a_private_data_directory(live_server):
    data_dir = live_server.data_dir
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for path in data_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_serve_logs_nothing_about_requests(live_server):
    for path in ("/en/", "/de/login", "/xx/"):
        urllib.request.urlopen(f"{live_server.url}/", timeout=5).close()
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"{live_server.url}{path}", timeout=5).close()
    output = live_server.output()
    assert "127.0.0.1:" in output, "the log is read (it shows the URL it serves)"
    assert "127.0.0.1 -" not in output and "GET " not in output and "/de/login" not in output


def test_large_bodies_get_the_apps_translated_413(live_server):
    """Bodies up to the server's cap reach the app, which answers in the page's language."""
    request = urllib.request.Request(
        f"{live_server.url}/de/login",
        data=b"passphrase=" + b"x" * (200 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 413
        assert error.headers["Content-Security-Policy"]
        assert '<html lang="de">' in error.read().decode()
    else:
        raise AssertionError("a 200 KiB body was accepted")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STILLROOM_ARGON2_CONCURRENCY", "0"),
        ("STILLROOM_IDLE_TIMEOUT_MINUTES", "-5"),
        ("STILLROOM_PARTICIPANT_PORT", "70000"),
        ("STILLROOM_MAX_REQUEST_KIB", "16"),  # the longest Chinese message would not fit
    ],
)
def test_impossible_settings_are_refused_by_name(variable, value):
    result = run("serve", "--no-tor", env={variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


def test_a_damaged_server_secret_stops_the_start(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "server.key").write_bytes(b"short")
    result = run("serve", "--no-tor", env={"STILLROOM_DATA_DIR": str(data)})
    assert result.returncode != 0
    assert "server.key is damaged" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_same_port_for_both_apps_is_refused_by_name():
    result = run(
        "serve",
        "--no-tor",
        env={"STILLROOM_PARTICIPANT_PORT": "18123", "STILLROOM_PORTAL_PORT": "18123"},
    )
    assert result.returncode == 2
    assert "STILLROOM_PARTICIPANT_PORT and STILLROOM_PORTAL_PORT are both 18123" in result.stderr


@pytest.mark.parametrize("command", [["serve", "--no-tor"], ["therapist", "list"], ["purge"]])
@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_data_directory_that_cannot_be_one_is_refused_in_one_line(tmp_path, command, where):
    (tmp_path / "notes").write_text("kept as it is")
    data = tmp_path / "notes" if where == "a file" else tmp_path / "notes" / "data"
    result = run(*command, env={"STILLROOM_DATA_DIR": str(data)})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: the data directory {data} ")
    assert ("is a file" if where == "a file" else f"lies below the file {tmp_path / 'notes'}") in (
        result.stderr
    )
    assert (tmp_path / "notes").read_text() == "kept as it is"


@pytest.mark.parametrize(
    "command",
    [
        ["therapist", "add", "--name", "Anna", "--languages", "de"],
        ["therapist", "list"],
        ["therapist", "disable", "Anna"],
        ["therapist", "reset", "Anna"],
        ["participant", "unblock", "Anna", "KX7M-Q2PD"],
        ["purge"],
        ["audit"],
        ["backup", "somewhere.sealed"],
        ["onion", "status"],
        ["onion", "clients", "add", "pilot"],
        ["onion", "clients", "list"],
        ["onion", "clients", "remove", "pilot"],
    ],
)
def test_commands_but_serve_refuse_a_missing_data_directory(tmp_path, command):
    """Run from the wrong folder, a command must not start a new, empty instance there."""
    missing = tmp_path / "instance"
    result = subprocess.run(
        [STILLROOM, *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONSAFEPATH": "1", "STILLROOM_DATA_DIR": "instance"},
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: the data directory {missing} does not exist: set STILLROOM_DATA_DIR to the"
        " one 'stillroom serve' uses, or start 'stillroom serve' once to create it\n"
    )
    assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_a_second_serve_on_the_same_data_directory_names_the_first(live_server):
    before = sorted(path.name for path in live_server.data_dir.iterdir())
    result = run(
        "serve",
        "--no-tor",
        env={
            "STILLROOM_DATA_DIR": str(live_server.data_dir),
            "STILLROOM_PARTICIPANT_PORT": "0",
            "STILLROOM_PORTAL_PORT": "0",
        },
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: {live_server.data_dir} is in use by another 'stillroom serve'"
        f" (PID {live_server.process.pid}): stop it first, or give this one a data directory"
        " of its own (STILLROOM_DATA_DIR) and other ports\n"
    )
    assert "Therapist portal" not in result.stdout
    assert sorted(path.name for path in live_server.data_dir.iterdir()) == before
    assert live_server.process.poll() is None, "the first one keeps serving"
    with urllib.request.urlopen(f"{live_server.url}/en/", timeout=5) as page:
        assert page.status == 200


def test_onion_status_says_serve_runs_without_tor(live_server):
    result = run("onion", "status", env={"STILLROOM_DATA_DIR": str(live_server.data_dir)})
    assert result.returncode == 1
    assert (
        f"'stillroom serve' (PID {live_server.process.pid}) runs without tor (--no-tor)"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_ctrl_c_during_start_up_stops_with_one_line(tmp_path):
    """Ctrl-C while serve is still starting (here: reading its settings file) ends calmly."""
    config = tmp_path / "stillroom.toml"
    os.mkfifo(config)  # serve waits on it until the test writes: a start-up that takes time
    process = subprocess.Popen(
        [STILLROOM, "serve", "--no-tor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONSAFEPATH": "1",
            "STILLROOM_CONFIG": str(config),
            "STILLROOM_DATA_DIR": str(tmp_path / "data"),
        },
    )
    try:
        writer = None
        deadline = time.monotonic() + 30
        while writer is None:  # fails until serve has opened the file to read it
            assert time.monotonic() < deadline and process.poll() is None
            try:
                writer = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        os.close(writer)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    assert err == "Stopped by Ctrl-C.\n"
    assert out == ""
    assert not (tmp_path / "data").exists()


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    """Whoever can write in the data directory must not make serve truncate another file."""
    data_dir = tmp_path / "instance"
    data_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 32)
    (data_dir / "serve.lock").symlink_to(victim)
    env = stillroom_env(data_dir, free_port(), {"STILLROOM_DISK_RESERVE_MIB": "0"})
    result = subprocess.run(
        [STILLROOM, "serve", "--no-tor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "serve.lock is a link" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_bytes() == b"x" * 32
