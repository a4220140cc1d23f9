"""The portal's therapist support, loaded once when the portal starts (never in the onion app).

Under ``stillroom serve`` the embedding model, the snippet library and the risk detector
live in support's own process (:mod:`stillroom.webapp.assist.worker`), and the portal asks
it over a socket (:class:`RemoteSupport`). Elsewhere (tests, the worker itself) they are
loaded here, and each embedding runs in a real thread at low CPU priority, as argon2 does.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import gevent
from flask import Flask, current_app
from gevent import monkey
from gevent.lock import BoundedSemaphore

from stillroom.webapp.assist.embed import EmbedderError, load_embedder
from stillroom.webapp.assist.risk import TOPICS, RiskDetector
from stillroom.webapp.assist.snippets import Library, Snippet, SnippetError, check_library
from stillroom.webapp.gate import argon2_runner
from stillroom.webapp.settings import Settings, SettingsError

#: Below the logins' argon2 (nice 10): a query waits rather than slowing a login or a chat.
ASSIST_NICE = 15
#: The participant's latest messages that the panel looks at.
LATEST_MESSAGES = 3
#: The socket of support's own process (:mod:`stillroom.webapp.assist.worker`).
WORKER_SOCKET_FILE = "assist-worker.sock"
#: Requests to the support's process at once. It answers one at a time; more waiting in
#: its socket's queue gains nothing, and a full queue makes a cooperative connect() spin.
ASKS_AT_ONCE = 4
#: The longest answer read from it, in bytes: three snippets are a few kilobytes.
MAX_ANSWER = 1024 * 1024
#: How long a therapist's click on a snippet waits for its text.
SNIPPET_SECONDS = 2.0

T = TypeVar("T")


class AssistError(SettingsError):
    """Therapist support cannot start: the message says what is missing and how to fix it."""


class SupportUnavailableError(Exception):
    """The support process did not answer (starting, busy or stopped)."""


class Support(Protocol):
    """What the portal's pages use of therapist support, wherever it runs."""

    @property
    def features(self) -> tuple[str, ...]:
        """The features turned on."""
        ...

    def related(self, messages: Sequence[str], lang: str) -> list[Snippet]:
        """The three snippets most related to ``messages`` (:raises SupportUnavailableError:)."""
        ...

    def topics(self, messages: Sequence[str], whole: bool = False) -> list[str]:
        """The risk topics the latest (or, with ``whole``, any of the) ``messages`` touch.

        :raises SupportUnavailableError: when the check could not run.
        """
        ...

    def snippet_text(self, key: str, lang: str) -> str:
        """The text of one snippet, or ""."""
        ...


@dataclass(frozen=True)
class Assist:
    """What the portal's therapist support has loaded, and how it runs its work."""

    features: tuple[str, ...]
    snippets: Library | None
    detector: RiskDetector | None
    run: Callable[..., Any]

    def related(self, messages: Sequence[str], lang: str) -> list[Snippet]:
        """Return the three snippets most related to ``messages`` (none when 'related' is off)."""
        if self.snippets is None or not messages:
            return []
        found: list[Snippet] = self.run(self.snippets.related, list(messages), lang)
        return found

    def topics(
        self, messages: Sequence[str], whole: bool = False, deadline: float | None = None
    ) -> list[str]:
        """Return the risk topics that the latest ``messages`` (or, with ``whole``, any of
        them) touch; none without a detector.

        :raises TimeoutError: when ``deadline`` (monotonic) passed before the check ended.
        """
        if self.detector is None or not messages:
            return []
        found: list[str] = self.run(self.detector.topics, list(messages), whole, deadline)
        return found

    def snippet_text(self, key: str, lang: str) -> str:
        """Return the text of the snippet ``key`` in ``lang``, or "" when there is none."""
        if self.snippets is None or not key:
            return ""
        snippet = self.snippets.get(key, lang)
        return snippet.text if snippet else ""


@dataclass(frozen=True)
class RemoteSupport:
    """Therapist support answered by its own process (``stillroom serve``), over a socket.

    The portal waits for an answer on a socket, which costs its event loop nothing (see
    :mod:`stillroom.webapp.assist.worker`). At most :data:`ASKS_AT_ONCE` requests are on
    their way; the others wait their turn, and give up when their time is over.
    """

    features: tuple[str, ...]
    socket: Path
    #: How long a panel waits, its turn included; a panel that says it could not check
    #: is better than a late one.
    seconds: float = 10.0
    turns: BoundedSemaphore = field(default_factory=lambda: BoundedSemaphore(ASKS_AT_ONCE))

    def related(self, messages: Sequence[str], lang: str) -> list[Snippet]:
        """Return the three snippets most related to ``messages``.

        :raises SupportUnavailableError: when the support's process did not answer in time.
        """
        if "related" not in self.features or not messages:
            return []
        reply = self._ask({"op": "related", "messages": list(messages), "lang": lang})
        found = reply.get("snippets")
        if not isinstance(found, list) or not all(
            isinstance(fields, list)
            and len(fields) == 4
            and all(isinstance(f, str) for f in fields)
            for fields in found
        ):
            raise SupportUnavailableError("the support process answered something else")
        return [Snippet(*fields) for fields in found]

    def topics(self, messages: Sequence[str], whole: bool = False) -> list[str]:
        """Return the risk topics found.

        :raises SupportUnavailableError: when the support's process did not answer in time;
            an empty list would read as "no risk topic", of a check that did not run.
        """
        if not messages:
            return []
        request = {"op": "topics", "messages": list(messages), "whole": whole}
        reply = self._ask(request, self.seconds * 6 if whole else self.seconds)
        found = reply.get("topics")
        if not isinstance(found, list) or not all(topic in TOPICS for topic in found):
            raise SupportUnavailableError("the support process answered something else")
        return [str(topic) for topic in found]

    def snippet_text(self, key: str, lang: str) -> str:
        """Return the text of the snippet ``key`` in ``lang``, or "" (also if no answer)."""
        if "related" not in self.features or not key:
            return ""
        try:
            reply = self._ask({"op": "snippet", "key": key, "lang": lang}, SNIPPET_SECONDS)
        except SupportUnavailableError:
            return ""
        text = reply.get("text")
        return text if isinstance(text, str) else ""

    def _ask(self, request: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
        """Wait for a turn, send one request line and read the answer line, all within
        ``seconds`` (the worker is told, and stops a long check when they are over)."""
        seconds = seconds or self.seconds
        deadline = time.monotonic() + seconds
        if not self.turns.acquire(timeout=seconds):
            raise SupportUnavailableError("the support process is busy")
        late = SupportUnavailableError("the support process did not answer in time")
        try:
            left = max(deadline - time.monotonic(), 0.1)
            with gevent.Timeout(left, late), socket.socket(socket.AF_UNIX) as connection:
                connection.connect(str(self.socket))
                line = json.dumps({**request, "seconds": left}, ensure_ascii=False)
                connection.sendall(line.encode() + b"\n")
                with connection.makefile("rb") as stream:
                    answer = stream.readline(MAX_ANSWER + 1)
            if not answer.endswith(b"\n"):
                raise SupportUnavailableError("the support process's answer was cut or too long")
            reply = json.loads(answer)
        except (OSError, ValueError) as error:
            raise SupportUnavailableError("the support process did not answer") from error
        finally:
            self.turns.release()
        if not isinstance(reply, dict) or "error" in reply:
            raise SupportUnavailableError("the support process refused the request")
        return reply


def well_formed(fields: Any) -> bool:
    """Whether one snippet of the support process's answer has a snippet's four texts."""
    return isinstance(fields, list) and len(fields) == 4 and all(isinstance(f, str) for f in fields)


def socket_path(settings: Settings) -> Path:
    """Return where support's own process listens (0600: only the service's user connects)."""
    return settings.data_dir / WORKER_SOCKET_FILE


def in_place(function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in this thread (outside ``stillroom serve``, as in tests)."""
    return function(*args)


def load_assist(settings: Settings, in_this_process: bool = False) -> Support | None:
    """Load what the features in STILLROOM_ASSIST need; ``None`` when none is on.

    Under ``stillroom serve`` the models run in the support's own process, and the portal
    gets a :class:`RemoteSupport` after checking the settings it can check cheaply.

    :raises AssistError: when something a feature needs is missing or unusable.
    """
    features = settings.assist_features
    if not features:
        return None
    model = settings.assist_model
    if "summary" in features and not settings.assist_model_address and not model.is_file():
        raise AssistError(
            f"STILLROOM_ASSIST includes summary, but STILLROOM_ASSIST_MODEL"
            f" ({model if str(model) != '.' else 'empty'}) is not a model file: name a GGUF"
            " file or set STILLROOM_ASSIST_MODEL_ADDRESS"
        )
    library = None
    detector = None
    # Each feature needs the embedder: the draft lists the risk topics discussed too.
    if "related" in features:
        folder = settings.assist_snippets
        if str(folder) in ("", ".") or not folder.is_dir():
            raise AssistError(
                f"STILLROOM_ASSIST includes related, but STILLROOM_ASSIST_SNIPPETS"
                f" ({folder if str(folder) not in ('', '.') else 'empty'}) is not a folder:"
                " name the snippet library (examples/snippets shows its form)"
            )
        problems = check_library(folder)
        if problems:
            raise AssistError(
                f"STILLROOM_ASSIST_SNIPPETS={folder}: {problems[0]}"
                f" ({len(problems)} problem(s); 'stillroom snippets check' lists them all)"
            )
    if not in_this_process and monkey.is_module_patched("threading"):
        if "risk" in features or "summary" in features:
            phrases = settings.assist_phrases
            if str(phrases) not in ("", ".") and not phrases.is_dir():
                raise AssistError(f"STILLROOM_ASSIST_PHRASES={phrases} is not a folder")
        return RemoteSupport(features, socket_path(settings))
    try:
        embedder = load_embedder(settings.assist_embedder)
    except EmbedderError as error:
        raise AssistError(str(error)) from error
    if "related" in features:
        try:
            library = Library.load(
                settings.assist_snippets, embedder, settings.data_dir / "snippet-cache"
            )
        except SnippetError as error:
            raise AssistError(f"STILLROOM_ASSIST_SNIPPETS: {error}") from error
    if "risk" in features or "summary" in features:
        phrases = settings.assist_phrases
        extra = None if str(phrases) in ("", ".") else phrases
        if extra is not None and not extra.is_dir():
            raise AssistError(f"STILLROOM_ASSIST_PHRASES={phrases} is not a folder")
        try:
            detector = RiskDetector.load(embedder, extra, settings.data_dir / "phrase-cache")
        except (OSError, ValueError) as error:
            raise AssistError(f"STILLROOM_ASSIST_PHRASES: {error}") from error
    runner = argon2_runner(ASSIST_NICE)
    return Assist(features, library, detector, runner or in_place)


def init_app(app: Flask) -> None:
    """Load the portal's therapist support once, before the first request."""
    app.config["ASSIST"] = load_assist(app.config["SETTINGS"])


def current_assist() -> Support | None:
    """Return this app's therapist support, or ``None`` when it is off (or in the onion app)."""
    assist: Support | None = current_app.config.get("ASSIST")
    return assist
