"""Small deterministic street-like test images (sky, facade, road bands with noise), made here with PIL so the
scoring tests do not depend on the sample-data generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def street_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    sky, road = height // 3 + seed % 5, 2 * height // 3
    pixels[:sky] = (135, 180, 230)
    pixels[sky:road] = (150 - 10 * (seed % 4), 110, 90 + 20 * (seed % 3))
    pixels[road:] = (70, 70, 75)
    pixels[road + 3 : road + 5, width // 4 : 3 * width // 4] = (240, 240, 240)  # lane marking
    noisy = pixels.astype(np.int16) + rng.integers(-12, 12, pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_images(directory: Path, count: int, start: int = 0, size: tuple[int, int] = (64, 48)) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        path = directory / f"street_{seed:03d}.png"
        street_image(seed, size).save(path)
        paths.append(path)
    return paths
