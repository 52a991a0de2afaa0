"""Peak memory of scoring one image, by image size: the working size (score_max_side) should make it flat.

Each measurement runs in a fresh subprocess that builds the demo models (Scorer.from_settings, tiny random-weight SAM
+ CLIP, sam route) and scores one generated file through Scorer.score(path), the way `geocurate score` opens files;
the child reports its own peak RSS (ru_maxrss). A child that only builds the models gives the baseline. The images
are drawn shapes over noise: a JPEG camera photo at 640x480 and 4000x3000, and a 12000x12000 PNG that compresses to
a few hundred KB (the kind of file that used to ask for 110 GB). max_image_pixels is raised so the largest one is
scored rather than refused.

    .venv/bin/python bench/score_memory.py [--points-per-side 16] [--max-side 1024] [--target-gb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = ((640, 480, "jpg"), (4000, 3000, "jpg"), (12000, 12000, "png"))


def draw_image(width: int, height: int, path: Path) -> None:
    """Street-like bands and shapes at any size, plus noise on a coarse grid (so JPEG has texture to code) that a
    12000x12000 PNG still stores in little space."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (135, 180, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height // 3, width, 2 * height // 3), fill=(150, 110, 90))
    draw.rectangle((0, 2 * height // 3, width, height), fill=(70, 70, 75))
    for i in range(12):
        x0, y0 = (i * 7919) % width, (i * 104729) % height
        draw.ellipse((x0, y0, x0 + width // 10, y0 + height // 10), fill=(30 * i % 255, 200, 60))
    noise = np.random.default_rng(0).integers(0, 40, (64, 64, 3), dtype=np.uint8)
    grain = Image.fromarray(noise).resize((width, height), Image.Resampling.NEAREST)
    Image.blend(image, grain, 0.15).save(path, quality=90) if path.suffix == ".jpg" else \
        Image.blend(image, grain, 0.15).save(path)


def child(args: argparse.Namespace) -> None:
    """Builds the models, scores args.image if given, prints {"peak_kb", "seconds", ...} as JSON."""
    import torch

    from curation.scoring import Scorer
    from geocurate.settings import Settings

    torch.set_num_threads(args.threads)
    settings = Settings(demo_models=True, segmenter="sam", sam_points_per_side=args.points_per_side,
                        score_max_side=args.max_side, max_image_pixels=200_000_000, score_batch_size=1)
    scorer = Scorer.from_settings(settings)
    out: dict = {}
    if args.image:
        start = time.perf_counter()
        result = scorer.score([args.image])[0]
        out.update(seconds=time.perf_counter() - start, locatability=result.locatability,
                   classes=len(result.class_ratios))
    out["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


def measure(args: argparse.Namespace, image: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", "--points-per-side", str(args.points_per_side),
               "--max-side", str(args.max_side), "--threads", str(args.threads)]
    if image is not None:
        command += ["--image", str(image)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--target-gb", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--image")
    args = parser.parse_args()
    if args.child:
        return child(args)

    print(f"load average {os.getloadavg()[0]:.2f}; points_per_side {args.points_per_side}, "
          f"score_max_side {args.max_side}, {args.threads} threads")
    baseline = measure(args, None)
    print(f"baseline (imports + demo models, no image): peak RSS {baseline['peak_kb'] / 2**20:.2f} GB")
    folder = Path(tempfile.mkdtemp(prefix="geocurate-memory-"))
    figures = []
    for width, height, suffix in SIZES:
        path = folder / f"{width}x{height}.{suffix}"
        draw_image(width, height, path)
        result = measure(args, path)
        if "error" in result:
            print(f"{width}x{height} {suffix}: FAILED {result['error']}")
            figures.append((f"{width}x{height}", None))
            continue
        gb = result["peak_kb"] / 2**20
        figures.append((f"{width}x{height}", gb))
        print(f"{width}x{height} {suffix} ({path.stat().st_size / 1e6:.2f} MB file): peak RSS {gb:.2f} GB, "
              f"{result['seconds']:.1f} s, locatability {result['locatability']:.4f}")
    met = all(gb is not None and gb < args.target_gb for _, gb in figures)
    listed = ", ".join(f"{name} {'failed' if gb is None else f'{gb:.2f} GB'}" for name, gb in figures)
    print(f"peak RSS per image (demo models, sam route, points_per_side {args.points_per_side}): {listed}; "
          f"target flat, < {args.target_gb:g} GB each -> {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
