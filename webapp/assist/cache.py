"""Vectors of the clinical team's texts (snippets, cues, risk phrases), cached on disk.

Embedding every text at each start costs seconds; its vector is the same as long as the
model, the kind ("passage" or "query") and the text are. So each vector is kept in its own
file named by a hash of those three: an edited text, another model or another kind gets a
new name and is embedded again. A participant's messages never pass through here: they are
embedded in memory for one lookup and never written.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy

from stillroom.webapp.assist.embed import Embedder

KINDS = ("passage", "query")


def embed_cached(
    embedder: Embedder, kind: str, texts: Sequence[str], cache_dir: Path | None
) -> numpy.ndarray:
    """Embed ``texts`` as ``kind`` ("passage" or "query"), reusing and filling the cache in
    ``cache_dir`` if given (a folder of this user's only, made if missing)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    embed = embedder.passages if kind == "passage" else embedder.queries
    if not texts:
        return numpy.zeros((0, 0), dtype=numpy.float32)
    if cache_dir is None:
        return embed(texts)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = [cache_dir / f"{cache_key(embedder.name, kind, text)}.npy" for text in texts]
    found: dict[int, numpy.ndarray] = {}
    for i, path in enumerate(paths):
        vector = _read_vector(path)
        if vector is not None:
            found[i] = vector
    missing = [i for i in range(len(texts)) if i not in found]
    if missing:
        for i, vector in zip(missing, embed([texts[i] for i in missing]), strict=True):
            _write_vector(paths[i], vector)
            found[i] = vector
    # Vectors of another length (a model that changed without changing its name) would not
    # stack: embed everything again rather than fail to start.
    if len({found[i].shape for i in found}) > 1:
        vectors = embed(texts)
        for path, vector in zip(paths, vectors, strict=True):
            _write_vector(path, vector)
        return vectors.astype(numpy.float32)
    return numpy.stack([found[i] for i in range(len(texts))]).astype(numpy.float32)


def cache_key(embedder_name: str, kind: str, text: str) -> str:
    """The cache file's name for ``text``: a change of model, of kind or of text is a new entry."""
    return hashlib.sha256(f"{embedder_name}\0{kind}\0{text}".encode()).hexdigest()


def _read_vector(path: Path) -> numpy.ndarray | None:
    """A cached vector, or None when it is absent or damaged (it is then computed again)."""
    try:
        vector: numpy.ndarray = numpy.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if vector.ndim != 1 or vector.dtype != numpy.float32 or not numpy.isfinite(vector).all():
        return None
    return vector


def _write_vector(path: Path, vector: numpy.ndarray) -> None:
    """Write one vector atomically, readable by this user only."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as file:
            numpy.save(file, numpy.asarray(vector, dtype=numpy.float32), allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
