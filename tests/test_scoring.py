"""The scorer on tiny seeded models: both segmenters end to end, decisions, versions, bad images, and the production
SAM path giving the same class ratios as the straightforward one."""

import numpy as np
import pytest
import torch

from curation.clip import build_clip
from curation.demo_models import build_tiny_sam
from curation.locatability import locatability
from curation.scoring import BadImage, Scorer, decide, open_image
from curation.segmenters.sam import SamSegmenter, resolve_overlaps, use_chunked_attention
from geocurate.settings import Settings
from tests.scoring_images import street_image, write_images

torch.set_num_threads(2)
FAST = dict(demo_models=True, sam_points_per_side=4, score_dtype="float32", score_batch_size=4)


@pytest.fixture(scope="module")
def sam_scorer():
    return Scorer.from_settings(Settings(**FAST))


@pytest.fixture(scope="module")
def images():
    return [street_image(seed) for seed in range(4)]


def test_decide_keeps_drops_and_sends_the_borderline_band_to_review():
    settings = Settings(threshold=0.4, review_band_low=0.3, review_band_high=0.5)
    assert [decide(v, settings) for v in (0.0, 0.29, 0.3, 0.4, 0.49, 0.5, 0.9)] == [
        "drop", "drop", "review", "review", "review", "keep", "keep"]
    no_band = Settings(threshold=0.4, review_band_low=0.0, review_band_high=0.0)
    assert [decide(v, no_band) for v in (0.39, 0.4)] == ["drop", "keep"]


def check_scores(results, scorer):
    for result in results:
        assert sum(result.class_ratios.values()) <= 1 + 1e-9
        assert all(0 <= r <= 1 and 0 <= c < 150 for c, r in result.class_ratios.items())
        assert result.locatability == pytest.approx(locatability(result.class_ratios, scorer.weights), abs=1e-12)
        assert result.decision == decide(result.locatability, scorer.settings)
        assert result.scorer_version == scorer.version
        ratios = [r for _, r in result.top_classes]
        assert ratios == sorted(ratios, reverse=True)


def test_sam_route_scores_end_to_end_and_is_reproducible(sam_scorer, images):
    results = sam_scorer.score(images)
    assert len(results) == 4
    check_scores(results, sam_scorer)
    assert any(r.class_ratios for r in results)  # the demo SAM proposes masks that CLIP names
    for result in results:  # the whole-image CLIP embedding comes along for dedup and pairing
        assert result.image_embedding.shape == (32,)
        assert np.linalg.norm(result.image_embedding) == pytest.approx(1, abs=1e-4)

    again = Scorer.from_settings(Settings(**FAST))
    assert again.version == sam_scorer.version
    assert [r.class_ratios for r in again.score(images)] == [r.class_ratios for r in results]


def test_maskformer_route_scores_end_to_end(images):
    scorer = Scorer.from_settings(Settings(**FAST, segmenter="maskformer"))
    results = scorer.score(images)
    check_scores(results, scorer)
    for result in results:  # a semantic-segmentation model labels every pixel
        assert sum(result.class_ratios.values()) == pytest.approx(1, abs=1e-9)
    assert scorer.version != Scorer.from_settings(Settings(**FAST)).version


def test_version_follows_every_setting_that_changes_rows(sam_scorer, tmp_path):
    def version(**changes):
        return Scorer.from_settings(Settings(**{**FAST, **changes})).version

    assert version(score_batch_size=1, clip_batch_size=7) == sam_scorer.version  # speed knobs only
    assert version(clip_prompt_template="a photo of a {name}") != sam_scorer.version
    assert version(sam_points_per_side=5) != sam_scorer.version
    assert version(threshold=0.45) != sam_scorer.version
    weights = tmp_path / "w.json"
    weights.write_text(str([0.5] * 150))
    assert version(class_weights_path=weights) != sam_scorer.version


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_production_sam_path_matches_the_straightforward_one(images, crop_n_layers):
    clip = build_clip("unused", None, demo=True, dtype="float32")
    common = dict(sam_identity="t", prompt_template="a street-view photo of a {name}", points_per_side=6,
                  pred_iou_thresh=0, stability_score_thresh=0, dtype="float32", crop_n_layers=crop_n_layers)
    naive = SamSegmenter(build_tiny_sam(), clip, **common, clip_batch_size=1, encoder_batch_size=1,
                         chunked_attention=False, fast_masks=False, skip_hidden_masks=False, image_embeddings=False)
    fast = SamSegmenter(build_tiny_sam(), clip, **common, clip_batch_size=64, encoder_batch_size=4)
    slow_ratios = [s.class_ratios for s in naive.segment(images)]
    fast_ratios = [s.class_ratios for s in fast.segment(images)]
    assert slow_ratios == fast_ratios
    assert set(fast.timer.seconds) == {"sam_encoder", "sam_masks", "clip_naming"}


def test_chunked_attention_equals_the_stock_encoder(monkeypatch):
    import curation.segmenters.sam as sam_module

    stock, chunked = build_tiny_sam(), build_tiny_sam()
    monkeypatch.setattr(sam_module, "ATTENTION_CHUNK_BYTES", 4096)  # force many chunks
    use_chunked_attention(chunked)
    pixels = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(stock.image_encoder(pixels), chunked.image_encoder(pixels), atol=1e-4)


def test_smallest_mask_owns_overlapping_pixels():
    big = np.zeros((4, 4), bool)
    big[:, :] = True
    small = np.zeros((4, 4), bool)
    small[1:3, 1:3] = True
    other = np.zeros((4, 4), bool)
    owner = resolve_overlaps([small, big, other], (4, 4))
    assert (owner[1:3, 1:3] == 0).all() and (owner[0] == 1).all()
    assert (resolve_overlaps([], (2, 2)) == -1).all()


def test_bad_images_raise_a_typed_error_saying_why(tmp_path, sam_scorer):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = write_images(tmp_path, 1, size=(64, 48))[0]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    tiny = tmp_path / "tiny.png"
    street_image(0, (40, 20)).save(tiny)
    with pytest.raises(BadImage, match="unreadable image"):
        open_image(corrupt)
    with pytest.raises(BadImage, match="unreadable image"):
        open_image(truncated)
    with pytest.raises(BadImage, match="file not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(BadImage, match="40x20 is below the minimum side of 32 px"):
        open_image(tiny, 32)
    with pytest.raises(BadImage, match="corrupt.jpg"):
        sam_scorer.score([good, corrupt])
    assert len(sam_scorer.score([good])) == 1
