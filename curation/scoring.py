"""Scoring: images in, locatability + class ratios + keep/drop/review decision out, under a versioned scorer.

The scorer version is a short hash of everything that changes a stored row (model identities, checkpoint hashes,
prompts, generator parameters, class weights, threshold and review band), so changing any of them adds new rows next
to the old ones instead of overwriting them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.locatability import NUM_CLASSES, load_weights, locatability, short_name, weights_digest

TOP_CLASSES = 5


class BadImage(ValueError):
    """An image that cannot be scored (unreadable, corrupt, too small); the message says why."""


def open_image(source: Image.Image | Path | str, min_side: int = 1) -> Image.Image:
    """Decoded RGB image, or BadImage. Decoding fully (not just the header) catches truncated files here."""
    if isinstance(source, Image.Image):
        image, name = source, "image"
    else:
        name = str(source)
        try:
            with Image.open(source) as handle:
                handle.load()
                image = handle.copy()
        except FileNotFoundError:
            raise BadImage(f"{name}: file not found") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BadImage(f"{name}: unreadable image ({exc})") from None
    if min(image.size) < min_side:
        raise BadImage(f"{name}: {image.width}x{image.height} is below the minimum side of {min_side} px")
    return image if image.mode == "RGB" else image.convert("RGB")


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


def top_classes(class_ratios: dict[int, float], n: int = TOP_CLASSES) -> list[tuple[str, float]]:
    ranked = sorted(class_ratios.items(), key=lambda item: (-item[1], item[0]))[:n]
    return [(short_name(index), ratio) for index, ratio in ranked]


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
    def from_settings(cls, settings=None, **segmenter_overrides: Any) -> "Scorer":
        from curation.segmenters.maskformer import MaskFormerSegmenter
        from curation.segmenters.sam import SamSegmenter

        if settings is None:
            from geocurate.settings import get_settings

            settings = get_settings()
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

    def score(self, images: list[Image.Image | Path | str]) -> list[ImageScore]:
        """Scores in input order. A path that cannot be read raises BadImage; callers that must not lose the rest of
        a batch open images with open_image() first (as curation.score_store does)."""
        opened = [open_image(im, self.settings.min_image_side) for im in images]
        results: list[ImageScore] = []
        batch = max(1, self.settings.score_batch_size)
        for start in range(0, len(opened), batch):
            for seg in self.segmenter.segment(opened[start : start + batch]):
                value = locatability(seg.class_ratios, self.weights)
                results.append(ImageScore(value, seg.class_ratios, decide(value, self.settings),
                                          top_classes(seg.class_ratios), self.version, seg.image_embedding))
        return results
