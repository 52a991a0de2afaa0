"""What every segmenter promises: per image, the fraction of its pixels that belongs to each ADE20K class."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
from PIL import Image

from curation.clip import file_digest
from curation.locatability import NUM_CLASSES

UNLABELED = -1


@dataclass
class Segmentation:
    class_ratios: dict[int, float]
    image_embedding: np.ndarray | None = None  # whole-image CLIP vector when the segmenter computed it anyway
    size: tuple[int, int] | None = None  # (width, height) the ratios were measured at: the working size


@dataclass
class StageTimer:
    """Seconds spent per stage, summed over calls: the benchmark's per-stage figures come from here."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()


class Segmenter(Protocol):
    params: dict[str, Any]  # everything that changes its output; hashed into the scorer version
    timer: StageTimer
    max_side: int | None  # working size: longer side of what is segmented (None: the image as it comes)

    def segment(self, images: list[Image.Image]) -> list[Segmentation]:
        """One Segmentation per RGB image, same order."""


def ratios_from_label_map(label_map: np.ndarray) -> dict[int, float]:
    """{class index: pixel fraction} of a per-pixel class map; UNLABELED pixels count in the total but add nothing."""
    flat = label_map.reshape(-1)
    counts = np.bincount(flat[flat >= 0].astype(np.int64), minlength=NUM_CLASSES)
    total = flat.size
    return {int(c): float(counts[c]) / total for c in np.flatnonzero(counts)}


def folder_digest(folder: Path) -> str:
    """Hash of a model folder's weight files: a saved model's identity does not depend on where it lies."""
    digest = hashlib.sha256()
    for weights in sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pth", ".pt"}):
        digest.update(file_digest(weights).encode())
    return digest.hexdigest()[:16]
