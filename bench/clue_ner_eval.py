"""Clue place recognition: agreement with the hand-labelled corpus (precision/recall of geo_ok, country accuracy),
then throughput of the batched path (`assess_clues`, spaCy nlp.pipe) against one `assess_clue` call per clue,
both measured in this run.

    .venv/bin/python bench/clue_ner_eval.py [--clues 10000] [--baseline-clues N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.clues import assess_clue, assess_clues  # noqa: E402
from curation.clues.evaluation import load_corpus, score  # noqa: E402
from curation.clues.gazetteer import load_gazetteer  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "clues_corpus.jsonl"


def synthetic_clues(corpus: list[dict], n: int, seed: int = 0) -> list[str]:
    """n distinct clue-like sentences: corpus sentences joined in pairs, so the matcher sees realistic text."""
    rng = random.Random(seed)
    texts = [row["text"] for row in corpus]
    return [f"{rng.choice(texts)} {rng.choice(texts)} (#{i})" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clues", type=int, default=10000)
    parser.add_argument("--baseline-clues", type=int, default=None, help="default: as many as --clues")
    parser.add_argument("--data-dir", type=Path, default=None, help="gazetteer cache (default: a temporary folder)")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="clue-bench-"))
    started = time.perf_counter()
    gazetteer = load_gazetteer(data_dir)
    print(f"gazetteer ready in {time.perf_counter() - started:.1f} s (version {gazetteer.version})")
    started = time.perf_counter()
    load_gazetteer(data_dir)
    print(f"gazetteer reloaded from its disk cache in {time.perf_counter() - started:.2f} s")

    corpus = load_corpus(CORPUS)
    scores = score(corpus, assess_clues([r["text"] for r in corpus], None, gazetteer))
    print(f"corpus: {scores.total} clues, agreement {scores.agreement:.1%} ({scores.agreed}/{scores.total})")
    print(f"geo_ok precision {scores.geo_precision:.3f} recall {scores.geo_recall:.3f}; "
          f"country accuracy {scores.country_accuracy:.1%} ({scores.country_correct}/{scores.country_total})")
    for line in scores.disagreements:
        print(f"  disagreement: {line}")

    texts = synthetic_clues(corpus, args.clues)
    # warm-up: spaCy adds every new word to its vocabulary on first sight; neither timed path should pay for that
    for text in texts:
        gazetteer.nlp.make_doc(text)
    started = time.perf_counter()
    assess_clues(texts, None, gazetteer)
    batched = time.perf_counter() - started
    baseline_texts = texts[: args.baseline_clues or args.clues]
    started = time.perf_counter()
    for text in baseline_texts:
        assess_clue(text, None, gazetteer)
    one_by_one = time.perf_counter() - started
    batched_rate, baseline_rate = len(texts) / batched, len(baseline_texts) / one_by_one
    print(f"assess_clues (nlp.pipe): {len(texts)} clues in {batched:.2f} s = {batched_rate:,.0f} clues/s")
    print(f"assess_clue one by one: {len(baseline_texts)} clues in {one_by_one:.2f} s = {baseline_rate:,.0f} clues/s")
    print(f"ratio batched / one-by-one: {batched_rate / baseline_rate:.2f}x")


if __name__ == "__main__":
    main()
