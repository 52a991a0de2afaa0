"""The scorer on tiny seeded models: both segmenters end to end, decisions, versions, bad images, the production
SAM path giving the same class ratios as the straightforward one, and bounded memory per image (size limits read
from the header, the working size)."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

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
    assert version(score_max_side=512) != sam_scorer.version  # the working size changes the masks
    maskformer = dict(segmenter="maskformer")
    assert version(**maskformer, score_max_side=512) != version(**maskformer)
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
    with pytest.raises(BadImage, match="unreadable image") as corrupt_error:
        open_image(corrupt)
    with pytest.raises(BadImage, match="unreadable image") as truncated_error:
        open_image(truncated)
    with pytest.raises(BadImage, match="file not found") as missing_error:
        open_image(tmp_path / "missing.png")
    with pytest.raises(BadImage, match="40x20 is below the minimum side of 32 px") as small_error:
        open_image(tiny, 32)
    assert [e.value.reason for e in (corrupt_error, truncated_error, missing_error, small_error)] == [
        "unreadable_image", "unreadable_image", "unreadable_image", "too_small"]
    with pytest.raises(BadImage, match="corrupt.jpg"):
        sam_scorer.score([good, corrupt])
    assert len(sam_scorer.score([good])) == 1


def png_claiming(path, width, height):
    """A PNG whose header says width x height but whose pixel data stops after a few bytes: decoding it fails, so
    an answer other than "unreadable" can only have come from the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def test_too_large_images_are_refused_from_the_header_without_decoding(tmp_path, sam_scorer):
    huge = png_claiming(tmp_path / "huge.png", 12000, 12000)  # 144 Mpx in a 100-byte file
    with pytest.raises(BadImage, match="12000x12000 has 144,000,000 pixels") as refused:
        open_image(huge, max_pixels=100_000_000)
    assert refused.value.reason == "too_large"
    with pytest.raises(BadImage) as decoded:  # allowed through, the same file fails to decode
        open_image(huge, max_pixels=200_000_000)
    assert decoded.value.reason == "unreadable_image"
    with pytest.raises(BadImage) as scored:  # Scorer.score opens paths under settings.max_image_pixels
        sam_scorer.score([huge])
    assert scored.value.reason == "too_large"


def test_pillow_bomb_guard_neither_preempts_nor_replaces_the_pixel_limit(tmp_path):
    between = png_claiming(tmp_path / "between.png", 10000, 10000)  # 100 Mpx: above Pillow's warning level
    beyond = png_claiming(tmp_path / "beyond.png", 20000, 20000)  # 400 Mpx: above Pillow's error level
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        for path in (between, beyond):
            with pytest.raises(BadImage) as allowed:
                open_image(path, max_pixels=10**9)
            assert allowed.value.reason == "unreadable_image"  # reached decoding: our limit, not Pillow's, applied
        with pytest.raises(BadImage) as legacy:  # a caller without a limit keeps the one Pillow enforced
            open_image(beyond)
    assert legacy.value.reason == "too_large"
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def drawn_street(width, height):
    """Flat-coloured shapes at any size: the same scene at every resolution, up to edge sampling."""
    image = Image.new("RGB", (width, height), (135, 180, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height // 3, width, 2 * height // 3), fill=(150, 110, 90))
    draw.rectangle((0, 2 * height // 3, width, height), fill=(70, 70, 75))
    for i in range(8):
        x, y = (i * 397) % width, (i * 211) % height
        draw.ellipse((x, y, x + width // 6, y + height // 6), fill=(40 * i % 255, 200, 60))
    return image


@pytest.mark.parametrize("segmenter", ["sam", "maskformer"])
def test_images_are_segmented_at_the_working_size(segmenter, images):
    scorer = Scorer.from_settings(Settings(**FAST, segmenter=segmenter, score_max_side=256))
    big = drawn_street(3000, 2000)
    assert scorer.open(big).size == (256, 171)
    assert scorer.segmenter.segment([big])[0].size == (256, 171)
    small = images[0]  # within the working size: segmented as it is, so its scores do not change
    assert scorer.open(small) is small
    assert scorer.segmenter.segment([small])[0].size == small.size


def test_jpegs_decode_at_reduced_scale_close_to_a_full_decode(tmp_path):
    path = tmp_path / "photo.jpg"
    drawn_street(4000, 3000).save(path, quality=95)
    reduced = open_image(path, max_side=1024)
    with Image.open(path) as full:
        reference = open_image(full.convert("RGB"), max_side=1024)
    assert reduced.size == reference.size == (1024, 768)
    difference = np.abs(np.asarray(reduced, np.int16) - np.asarray(reference, np.int16))
    assert difference.mean() < 1.5  # grey levels: DCT-domain scaling then Lanczos vs Lanczos alone


def test_class_fractions_at_the_working_size_match_full_size():
    """Fractions are resolution-independent up to sampling at region edges: the same scene measured at 1200x900 and
    at a 300-px working size agrees within 0.2 percentage points per class and 1% in total (sum of |differences|)."""
    big = drawn_street(1200, 900)
    fractions = [Scorer.from_settings(Settings(**FAST, segmenter="maskformer", score_max_side=side))
                 .segmenter.segment([big])[0] for side in (1200, 300)]
    assert [f.size for f in fractions] == [(1200, 900), (300, 225)]
    full, working = (f.class_ratios for f in fractions)
    differences = [abs(full.get(c, 0.0) - working.get(c, 0.0)) for c in set(full) | set(working)]
    assert len(full) > 3  # several classes, so the comparison has something to compare
    assert max(differences) <= 0.002
    assert sum(differences) <= 0.01


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_bounded_memory_mask_generator_keeps_the_stock_candidates(monkeypatch, crop_n_layers):
    """One mask per chunk, two decoder batches, the quality filters on and NMS off: every candidate the stock
    generator keeps, the chunked, bit-packed one keeps too, pixel for pixel and in the same order."""
    import curation.segmenters.sam as sam_module

    monkeypatch.setattr(sam_module, "MASK_CHUNK_BYTES", 1)
    clip = build_clip("unused", None, demo=True, dtype="float32")
    array = np.asarray(street_image(1, (256, 192)))
    outputs = []
    for fast in (False, True):
        segmenter = SamSegmenter(build_tiny_sam(), clip, sam_identity="t", prompt_template="{name}",
                                 points_per_side=9, crop_n_layers=crop_n_layers, pred_iou_thresh=0.25,
                                 stability_score_thresh=0.55, dtype="float32", fast_masks=fast)
        segmenter.generator.box_nms_thresh = 1.01  # keep every candidate: compare all of them, not one survivor
        segmenter.generator.stability_score_offset = 0.01  # random logits sit near 0: make the filter bite
        outputs.append(segmenter.generator.generate(array))
    stock, fast = outputs
    assert 0 < len(fast) < 81 * 3 * (1 + 4 * crop_n_layers)  # the filters dropped some, kept some
    assert len(fast) == len(stock)
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(stock, fast))
    assert [a["predicted_iou"] for a in stock] == [b["predicted_iou"] for b in fast]
