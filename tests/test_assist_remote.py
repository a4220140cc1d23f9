"""The portal's side of support's own process: what it takes from an answer, and how long
it waits. Run as ``stillroom serve`` runs it (gevent, a real unix socket), against a
stand-in for the worker that answers wrongly on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Runs RemoteSupport against a stand-in answering one way, and prints what came of it.
PROBE = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, resource, socket, sys, time
    import gevent
    from stillroom.webapp.assist.service import RemoteSupport, SupportUnavailableError

    path, answer = sys.argv[1], sys.argv[2]

    def stand_in():
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(8)
        while True:
            connection, _ = listener.accept()
            try:
                connection.makefile("rb").readline()
                if answer == "huge":  # sent a mebibyte at a time: only the reader may grow
                    connection.sendall(b'{"topics": ["')
                    chunk = b"x" * (1024 * 1024)
                    for _ in range(64):
                        connection.sendall(chunk)
                elif answer == "drip":
                    for _ in range(60):
                        connection.sendall(b" ")
                        gevent.sleep(0.5)
                else:
                    connection.sendall(answer.encode() + b"\\n")
            except OSError:  # the portal hung up
                pass
            connection.close()

    gevent.spawn(stand_in)
    gevent.sleep(0.1)
    remote = RemoteSupport(("related", "risk"), path, seconds=1.0)
    began = time.monotonic()
    try:
        outcome = {"topics": remote.topics(["hello"], whole=True)}
    except SupportUnavailableError:
        outcome = {"unavailable": True}
    try:
        outcome["snippets"] = len(remote.related(["hello"], "en"))
    except SupportUnavailableError:
        outcome["snippets_unavailable"] = True
    outcome["seconds"] = time.monotonic() - began
    outcome["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(outcome))
    """
)


def probe(tmp_path: Path, answer: str) -> dict:
    """Run the portal's side against a stand-in that answers ``answer``."""
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.sock"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), answer],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "answer",
    [
        "{}",  # no topics at all: never "not discussed" of all five
        '{"topics": ["self-harm", "sleep"]}',  # a topic no list has
        '{"topics": "self-harm", "snippets": [["key", "en", "title"]]}',  # wrong shapes
        "not json",
        '{"error": "bad request"}',
    ],
)
def test_an_answer_that_is_not_what_was_asked_counts_as_no_answer(tmp_path, answer):
    outcome = probe(tmp_path, answer)
    assert outcome.get("unavailable") and outcome.get("snippets_unavailable")


def test_a_well_formed_answer_is_taken_a_huge_one_cut_off_and_a_dripping_one_timed_out(
    tmp_path,
):
    answer = '{"topics": ["self-harm"], "snippets": [["k", "en", "Title", "Text"]]}'
    taken = probe(tmp_path, answer)
    assert taken["topics"] == ["self-harm"] and taken["snippets"] == 1
    huge = probe(tmp_path, "huge")  # 64 MiB on one line
    assert huge.get("unavailable") and huge["peak_mb"] < taken["peak_mb"] + 16
    drip = probe(tmp_path, "drip")
    # The whole request is bounded, not each read: 6 s for a whole chat's check and 1 s
    # for a panel's, never the 30 s of half-second drips.
    assert drip.get("unavailable") and drip["snippets_unavailable"] and drip["seconds"] < 10
