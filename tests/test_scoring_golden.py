"""Golden scores of the demo scorer: the demo's sample (seed 0) scored by both segmenters with the seeded tiny demo
models (SAM + CLIP, and the tiny ADE20K SegFormer behind segmenter=maskformer) under the demo's settings, compared to
values recorded from the code to 1e-9: a refactor of scoring, the segmenters, the demo models or the sample
generator cannot change a score, a class fraction, a decision or the scorer version unnoticed.

The values were bit-identical over repeated runs and with 1 and 2 torch threads on this machine (so the test does
not fix the thread count). They come from torch's CPU kernels: another CPU or torch build may differ in the last
digits. After a change that is meant to change scores, rewrite them with
`.venv/bin/python -m tests.test_scoring_golden --write` and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("data") / "scoring_golden.json"
SEGMENTERS = ("sam", "maskformer")
IMAGES = [f"street_{index:04d}.jpg" for index in range(4)]  # the sample's first four (all readable) street views
# The demo's scoring settings (geocurate.cli.commands.demo.DEMO_SETTINGS: SAM grid, threshold, review band) on the CPU
# in float32, written out so that the test pins the scorer, not the demo's choice of settings.
DEMO_SCORING = dict(demo_models=True, sam_points_per_side=8, threshold=0.3, review_band_low=0.29,
                    review_band_high=0.31, score_dtype="float32", device="cpu", score_batch_size=8)
TOLERANCE = 1e-9
pytestmark = pytest.mark.xdist_group("golden")  # one scoring of the sample per run, also under pytest -n


def score_sample(directory: Path) -> dict[str, dict]:
    """{segmenter: {"version", "images": {file name: {"locatability", "decision", "class_ratios", "top_classes"}}}}"""
    from curation.scoring import Scorer
    from geocurate.cli.sample_data import generate_sample
    from geocurate.settings import Settings

    sample = generate_sample(directory, n_images=8, n_clues=4, seed=0)
    paths = [sample.images_dir / name for name in IMAGES]
    scored = {}
    for segmenter in SEGMENTERS:
        scorer = Scorer.from_settings(Settings(**DEMO_SCORING, segmenter=segmenter))
        results = scorer.score(paths)
        scored[segmenter] = {"version": scorer.version, "images": {
            path.name: {"locatability": result.locatability, "decision": result.decision,
                        "class_ratios": {str(index): ratio for index, ratio in sorted(result.class_ratios.items())},
                        "top_classes": [[name, ratio] for name, ratio in result.top_classes]}
            for path, result in zip(paths, results)}}
    return scored


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return score_sample(tmp_path_factory.mktemp("golden-sample"))


@pytest.fixture(scope="module")
def golden() -> dict[str, dict]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_scores_and_class_fractions_match_the_recorded_ones(scored, golden, segmenter: str) -> None:
    got, want = scored[segmenter]["images"], golden[segmenter]["images"]
    assert list(got) == list(want) == IMAGES
    for name in IMAGES:
        assert got[name]["locatability"] == pytest.approx(want[name]["locatability"], abs=TOLERANCE, rel=0), name
        assert got[name]["decision"] == want[name]["decision"], name
        assert list(got[name]["class_ratios"]) == list(want[name]["class_ratios"]), f"{name}: other classes"
        assert got[name]["class_ratios"] == pytest.approx(want[name]["class_ratios"], abs=TOLERANCE, rel=0), name
        assert [n for n, _ in got[name]["top_classes"]] == [n for n, _ in want[name]["top_classes"]], name
        assert [r for _, r in got[name]["top_classes"]] == pytest.approx(
            [r for _, r in want[name]["top_classes"]], abs=TOLERANCE, rel=0), name


def test_the_sample_gets_both_decisions_around_the_demo_threshold(golden) -> None:
    """The golden images are not all alike: the SAM route keeps one and sends others to review, and the segmentation
    model names many classes for most of them."""
    assert {image["decision"] for image in golden["sam"]["images"].values()} == {"keep", "review"}
    assert sum(len(image["class_ratios"]) > 10 for image in golden["maskformer"]["images"].values()) >= 3


@pytest.mark.parametrize("segmenter", SEGMENTERS)
def test_scorer_versions_match_the_recorded_ones(scored, golden, segmenter: str) -> None:
    """The version names the scorer's parameters; a new one means every stored score is computed again."""
    assert scored[segmenter]["version"] == golden[segmenter]["version"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.executable} -m tests.test_scoring_golden --write")
    with tempfile.TemporaryDirectory() as directory:
        GOLDEN.write_text(json.dumps(score_sample(Path(directory)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
