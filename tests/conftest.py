"""Shared fixtures: real SQLite files in tmp_path, fast argon2, a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from stillroom.webapp import create_participant_app
from stillroom.webapp.settings import Settings

from support import FAST_ARGON2, AuthActions, Clock, LiveServer, start_server, stop_server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load({}, data_dir=tmp_path / "instance", **FAST_ARGON2)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, clock: Clock) -> Flask:
    return create_participant_app(settings, clock=clock)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real ``stillroom serve --no-tor`` process for the whole test session."""
    server = start_server(tmp_path_factory.mktemp("live") / "instance")
    yield server
    stop_server(server)
