"""The locatability formula: the paper's worked example exactly, shipped weights, and clear validation errors."""

import json

import pytest

from curation.locatability import (
    ADE20K_CLASSES,
    REFERENCE_WEIGHTS,
    WORKED_EXAMPLE,
    load_weights,
    locatability,
    weights_digest,
)
from geocurate.settings import Settings


def test_worked_example_is_reproduced_exactly():
    assert locatability(WORKED_EXAMPLE["class_ratios"]) == pytest.approx(0.48667102942170887, abs=1e-12)
    as_ints = {int(k): v for k, v in WORKED_EXAMPLE["class_ratios"].items()}
    assert locatability(as_ints) == pytest.approx(0.48667102942170887, abs=1e-12)


def test_classes_and_weights_ship_with_the_package_in_index_order():
    assert len(ADE20K_CLASSES) == len(REFERENCE_WEIGHTS) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    assert ADE20K_CLASSES[149] == "flag"
    assert locatability({2: 1.0}) == REFERENCE_WEIGHTS[2]  # an all-sky image scores the sky weight


def test_unlabeled_pixels_add_nothing_and_custom_weights_apply():
    assert locatability({}) == 0.0
    weights = [0.0] * 150
    weights[43] = 2.0  # signboard
    assert locatability({43: 0.25, 0: 0.5}, weights) == 0.5


@pytest.mark.parametrize(
    "ratios, message",
    [
        ({0: -0.1}, "must be a fraction >= 0"),
        ({0: float("nan")}, "must be a fraction >= 0"),
        ({0: 0.7, 1: 0.4}, "sum to 1.1"),
        ({150: 0.1}, "unknown ADE20K class index 150"),
        ({-1: 0.1}, "unknown ADE20K class index -1"),
        ({"sky": 0.1}, "not an ADE20K class index"),
    ],
)
def test_invalid_ratios_raise_a_clear_value_error(ratios, message):
    with pytest.raises(ValueError, match=message):
        locatability(ratios)


def test_rounding_above_one_is_tolerated():
    assert locatability({0: 0.5, 1: 0.5 + 1e-9}) > 0


def test_load_weights_from_settings(tmp_path):
    assert load_weights(Settings()) == list(REFERENCE_WEIGHTS)
    custom = [0.01 * (i % 7) for i in range(150)]
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(custom))
    assert load_weights(Settings(class_weights_path=path)) == custom
    path.write_text(json.dumps({"weights": custom}))
    assert load_weights(Settings(class_weights_path=path)) == custom
    assert weights_digest(custom) != weights_digest(REFERENCE_WEIGHTS)


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", "expected 150 weights"),
    ("{not json", "class weights file"),
    (json.dumps([0.1] * 149 + ["x"]), "weight 149 .* not a finite number"),
])
def test_bad_weight_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "weights.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_weights(Settings(class_weights_path=path))


def test_top_classes_break_ties_by_class_order_whatever_the_key_type():
    """The CLI (int keys from the segmenter) and review tasks (str keys read back from JSON) name the same classes."""
    from curation.locatability import top_classes
    from labeling.push import top_classes_text

    ratios = {5: 0.2, 2: 0.2, 1: 0.35, 7: 0.05, 0: 0.1, 9: 0.1}
    expected = [("building", 0.35), ("sky", 0.2), ("ceiling", 0.2), ("wall", 0.1), ("grass", 0.1)]
    assert top_classes(ratios) == expected
    assert top_classes({str(k): v for k, v in ratios.items()}) == expected
    assert top_classes_text({str(k): v for k, v in ratios.items()}) == (
        "top classes: building 35%, sky 20%, ceiling 20%, wall 10%, grass 10%")
    assert top_classes_text({}) == "top classes: none"
