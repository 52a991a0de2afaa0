"""Scoring: images in, locatability + class ratios + keep/drop/review decision out, under a versioned scorer.

The scorer version is a short hash of everything that changes a stored row (model identities, checkpoint hashes,
prompts, generator parameters, class weights, threshold and review band), so changing any of them adds new rows next
to the old ones instead of overwriting them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from curation.locatability import NUM_CLASSES, load_weights, locatability, top_classes, weights_digest

REASONS = ("unreadable_image", "too_small", "too_large")  # quarantine reason codes (db/quarantine.py REASONS)
# Downscaling filter: Lanczos weighs every source pixel under the reduced one (no aliasing of fine texture), and
# reducing_gap lets Pillow box-reduce by whole factors first, so a huge image costs little time.
RESAMPLING = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0


class BadImage(ValueError):
    """An image that cannot be scored; the message says why for people, `reason` (one of REASONS) for code that
    quarantines it, so callers never parse messages."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _pillow_bomb_check_off() -> Iterator[int | None]:
    """Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS: a warning above ~89 Mpx, an error above twice
    that) tests the same header size as our max_pixels, but as one process-wide constant: left on, an image between
    its limit and ours would warn, one above twice its limit would fail as "unreadable" instead of `too_large`, and a
    max_image_pixels raised on purpose could never pass ~179 Mpx. So it is switched off while Image.open parses the
    header, and open_image applies the per-call limit itself right after, before any pixel is decoded. A caller
    that gives no limit gets the one Pillow would have enforced (twice MAX_IMAGE_PIXELS), now as `too_large`. The lock
    keeps concurrent callers from restoring each other's value. Yields that default limit."""
    with _PILLOW_LIMIT:
        configured = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield None if configured is None else 2 * configured
        finally:
            Image.MAX_IMAGE_PIXELS = configured


def working_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most max_side, aspect kept. Masks and class fractions are
    measured at this size, so memory per image is bounded by max_side², not by the file's pixel count."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_working_size(image: Image.Image, max_side: int | None) -> Image.Image:
    """The RGB image at working_size. An image already within it comes back untouched, so scores of such images do
    not change with the working size."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    target = working_size(image.size, max_side)
    if target == image.size:
        return image
    return image.resize(target, RESAMPLING, reducing_gap=REDUCING_GAP)


def check_size(size: tuple[int, int], name: str, min_side: int, max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise BadImage(f"{name}: {width}x{height} has {width * height:,} pixels, above the limit of {max_pixels:,} "
                       "(GEOCURATE_MAX_IMAGE_PIXELS); not decoded", "too_large")
    if min(width, height) < min_side:
        raise BadImage(f"{name}: {width}x{height} is below the minimum side of {min_side} px", "too_small")


def _unreadable(name: str, exc: BaseException) -> BadImage:
    return BadImage(f"{name}: unreadable image ({exc})", "unreadable_image")


def _decode(path: Path | str, min_side: int, max_pixels: int | None, max_side: int | None) -> Image.Image:
    """Header first (size limits), then the pixels. Decoding fully here, not lazily later, catches truncated files
    at this point. A JPEG is decoded at a reduced DCT scale (draft) when that still leaves at least twice the
    working size to resample from, so a 48-Mpx photo never exists in memory at full size."""
    name = str(path)
    try:
        with _pillow_bomb_check_off() as pillow_limit:
            handle = Image.open(path)
    except FileNotFoundError:
        raise BadImage(f"{name}: file not found", "unreadable_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(name, exc) from None
    with handle:  # closes the file; the decoded pixels stay
        check_size(handle.size, name, min_side, max_pixels if max_pixels is not None else pillow_limit)
        target = working_size(handle.size, max_side)
        if target != handle.size:
            handle.draft(None, (target[0] * 2, target[1] * 2))
        try:
            handle.load()
        except Image.DecompressionBombError as exc:  # a frame larger than the header said (GIF)
            raise BadImage(f"{name}: {exc}", "too_large") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise _unreadable(name, exc) from None
    return handle


def open_image(source: Image.Image | Path | str, min_side: int = 1, max_pixels: int | None = None,
               max_side: int | None = None) -> Image.Image:
    """Decoded RGB image at most max_side on its longer side (None: full size), or BadImage with its reason.
    max_pixels is checked on the header, before decoding; None keeps the limit Pillow alone would have enforced."""
    if isinstance(source, Image.Image):
        check_size(source.size, "image", min_side, max_pixels)
        image = source
    else:
        image = _decode(source, min_side, max_pixels, max_side)
    return to_working_size(image, max_side)


def decide(value: float, settings) -> str:
    """keep at or above the threshold, drop below it, review inside [review_band_low, review_band_high)."""
    if settings.review_band_low <= value < settings.review_band_high:
        return "review"
    return "keep" if value >= settings.threshold else "drop"


def decision_params(settings) -> dict[str, float]:
    return {"threshold": settings.threshold, "review_band": [settings.review_band_low, settings.review_band_high]}


def version_of(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ImageScore:
    locatability: float
    class_ratios: dict[int, float]
    decision: str
    top_classes: list[tuple[str, float]]  # (class name, pixel fraction), largest first
    scorer_version: str = ""
    image_embedding: np.ndarray | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"locatability": round(self.locatability, 6), "decision": self.decision,
                "top_classes": [{"class": n, "ratio": round(r, 4)} for n, r in self.top_classes],
                "scorer_version": self.scorer_version}


class Scorer:
    """Models are loaded once (per process) in from_settings; score() is then called for every batch."""

    def __init__(self, segmenter, settings, weights: list[float] | None = None, clip=None) -> None:
        self.segmenter = segmenter
        self.settings = settings
        self.weights = list(weights if weights is not None else load_weights(settings))
        self.clip = clip
        self.params: dict[str, Any] = {
            **segmenter.params, "weights": weights_digest(self.weights), **decision_params(settings),
            "num_classes": NUM_CLASSES,
        }
        self.version = version_of(self.params)

    @classmethod
    def from_settings(cls, settings, **segmenter_overrides: Any) -> "Scorer":
        from curation.segmenters.maskformer import MaskFormerSegmenter
        from curation.segmenters.sam import SamSegmenter

        weights = load_weights(settings)
        if settings.segmenter == "sam":
            segmenter = SamSegmenter.from_settings(settings, **segmenter_overrides)  # SAM first: fails fast
            return cls(segmenter, settings, weights, segmenter.clip)
        return cls(MaskFormerSegmenter.from_settings(settings, **segmenter_overrides), settings, weights)

    @property
    def embedding_version(self) -> str | None:
        """Model version of the whole-image embeddings the segmenter computes alongside (None when it does not)."""
        computes = self.clip is not None and getattr(self.segmenter, "image_embeddings", False)
        return self.clip.version if computes else None

    def open(self, source: Image.Image | Path | str) -> Image.Image:
        """open_image under this scorer's limits, decoded no larger than the segmenter's working size: what callers
        that must not lose the rest of a batch (the store, the CLI) call on each file before score()."""
        return open_image(source, self.settings.min_image_side, self.settings.max_image_pixels,
                          self.segmenter.max_side)

    def score(self, images: list[Image.Image | Path | str]) -> list[ImageScore]:
        """Scores in input order. A path that cannot be read raises BadImage; callers that must not lose the rest of
        a batch open images with open() first."""
        opened = [self.open(im) for im in images]
        results: list[ImageScore] = []
        batch = max(1, self.settings.score_batch_size)
        for start in range(0, len(opened), batch):
            for seg in self.segmenter.segment(opened[start : start + batch]):
                value = locatability(seg.class_ratios, self.weights)
                results.append(ImageScore(value, seg.class_ratios, decide(value, self.settings),
                                          top_classes(seg.class_ratios), self.version, seg.image_embedding))
        return results
