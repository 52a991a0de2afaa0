"""Scoring throughput at realistic model sizes (SAM vit_b, open_clip ViT-B-32, MaskFormer Swin-B; random weights,
since none can be downloaded here): the straightforward path against the production path, same images, same
weights, measured in this run.

    naive:      one image at a time, stock SamAutomaticMaskGenerator (RLE round trip), one CLIP call per mask,
                every mask named (hidden ones too), fp32
    production: image-encoder pass batched over the images, chunked global attention, masks kept as tensors,
                hidden masks skipped, all crops of the batch through CLIP in batches, dtype auto (bf16 only where
                the CPU has native bf16), plus the whole-image embedding stored for dedup and pairing

Random-weight SAM proposes only a mask or two per image once NMS has run (a real SAM: tens to a hundred), so the
CLIP-naming stage is also measured on --synthetic-masks masks per image, a grid partition of each image.

    .venv/bin/python bench/score_throughput.py [--n 2] [--size 512x384] [--maskformer-n 2] [--skip-maskformer] [--skip-sam]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curation.clip import build_clip  # noqa: E402
from geocurate.device import cpu_has_native_bf16, resolve_device, resolve_dtype  # noqa: E402
from curation.locatability import REFERENCE_WEIGHTS, locatability  # noqa: E402
from curation.scoring import decide  # noqa: E402
from curation.segmenters.sam import SamSegmenter, _Masks, resolve_overlaps  # noqa: E402
from geocurate.settings import Settings  # noqa: E402

PROMPT = Settings().clip_prompt_template
NAIVE = dict(clip_batch_size=1, encoder_batch_size=1, chunked_attention=False, fast_masks=False,
             skip_hidden_masks=False, image_embeddings=False, dtype="float32")


def bench_images(n: int, size: tuple[int, int]) -> list[Image.Image]:
    try:
        from geocurate.cli.sample_data import generate_sample

        folder = Path(tempfile.mkdtemp(prefix="geocurate-bench-"))
        generate_sample(folder, n_images=n + 4, n_clues=4, seed=0)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
        images = []
        for path in files:
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB").resize(size, Image.BICUBIC))
            except OSError:
                continue  # the sample set includes corrupt files on purpose
        if len(images) >= n:
            return images[:n]
    except (ImportError, ValueError, TypeError):
        pass  # no usable sample generator: synthetic bands below
    rng = np.random.default_rng(0)
    width, height = size
    images = []
    for seed in range(n):
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[: height // 3] = (135, 180, 230)
        pixels[height // 3 : 2 * height // 3] = (150, 110 + 10 * seed, 90)
        pixels[2 * height // 3 :] = (70, 70, 75)
        images.append(Image.fromarray((pixels + rng.integers(0, 25, pixels.shape)).clip(0, 255).astype(np.uint8)))
    return images


def seeded(builder, *args, **kwargs):
    torch.manual_seed(0)
    return builder(*args, **kwargs)


def grid_proposals(images: list[Image.Image], count: int) -> list[_Masks]:
    proposals = []
    for image in images:
        height, width = image.height, image.width
        cols = int(np.ceil(np.sqrt(count * width / height)))
        rows = int(np.ceil(count / cols))
        masks = []
        for r in range(rows):
            for c in range(cols):
                if len(masks) == count:
                    break
                mask = np.zeros((height, width), bool)
                mask[r * height // rows : (r + 1) * height // rows, c * width // cols : (c + 1) * width // cols] = True
                masks.append(mask)
        proposals.append(_Masks(resolve_overlaps(masks, (height, width)), masks))
    return proposals


def scores_of(segmentations) -> list[float]:
    return [locatability(s.class_ratios, REFERENCE_WEIGHTS) for s in segmentations]


def compare(label: str, naive_scores: list[float], fast_scores: list[float]) -> None:
    settings = Settings()
    diff = max((abs(a - b) for a, b in zip(naive_scores, fast_scores)), default=0.0)
    flips = sum(decide(a, settings) != decide(b, settings) for a, b in zip(naive_scores, fast_scores))
    print(f"{label}: largest |score difference| {diff:.2e}; decisions that differ: {flips} of {len(naive_scores)}")


def stage_line(name: str, naive: float, fast: float, per: int) -> None:
    ratio = naive / fast if fast > 0 else float("inf")
    print(f"  {name:<28} naive {naive / per:8.2f} s/img   production {fast / per:8.2f} s/img   ratio {ratio:5.2f}x")


def time_store_writes(images: list[Image.Image], segmentations) -> float:
    """Production store writes (score rows + embeddings) into a fresh SQLite store."""
    from curation.embeddings import store_embeddings
    from db.engine import dispose_all, session_scope
    from db.images import add_images, ids_by_sha
    from db.migrate import upgrade
    from db.scores import add_scores

    url = f"sqlite:///{tempfile.mkdtemp(prefix='geocurate-bench-')}/store.db"
    upgrade(url)
    shas = [f"{i:064x}" for i in range(len(images))]
    with session_scope(url) as session:
        add_images(session, [dict(sha256=s, uri=f"/bench/{s}.png") for s in shas])
        ids = list(ids_by_sha(session, shas).values())
    start = time.perf_counter()
    with session_scope(url) as session:
        add_scores(session, [dict(image_id=i, scorer_version="bench", locatability=v, class_ratios={
            str(k): r for k, r in s.class_ratios.items()}, decision="keep") for i, s, v in
            zip(ids, segmentations, scores_of(segmentations))])
        store_embeddings(session, {i: s.image_embedding for i, s in zip(ids, segmentations)
                                   if s.image_embedding is not None}, "bench")
    seconds = time.perf_counter() - start
    dispose_all()
    return seconds


def bench_sam(args, images: list[Image.Image]) -> None:
    from segment_anything import sam_model_registry

    n = len(images)
    naive_clip = seeded(build_clip, "ViT-B-32", None, False, "auto", "float32")
    fast_clip = seeded(build_clip, "ViT-B-32", None, False, "auto", "auto")
    common = dict(sam_identity="vit_b:random", prompt_template=PROMPT, points_per_side=args.points_per_side,
                  pred_iou_thresh=0.0, stability_score_thresh=0.0)  # random weights never pass the real filters
    naive = SamSegmenter(seeded(sam_model_registry["vit_b"]), naive_clip, **common, **NAIVE)
    fast = SamSegmenter(seeded(sam_model_registry["vit_b"]), fast_clip, **common, encoder_batch_size=n,
                        clip_batch_size=Settings().clip_batch_size)

    start = time.perf_counter()
    naive_out = [naive.segment([image])[0] for image in images]
    naive_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fast_out = fast.segment(images)
    fast_seconds = time.perf_counter() - start
    store_seconds = time_store_writes(images, fast_out)
    fast_total = fast_seconds + store_seconds

    print(f"sam route: {n} images {images[0].width}x{images[0].height}, points_per_side={args.points_per_side}, "
          f"SAM vit_b + CLIP ViT-B-32 (random weights), production CLIP dtype {fast_clip.dtype}")
    print(f"  naive       {n / naive_seconds:.4f} images/s ({naive_seconds:.1f} s)")
    print(f"  production  {n / fast_total:.4f} images/s ({fast_total:.1f} s incl. store writes)")
    print(f"  ratio production/naive (whole sam route): {naive_seconds / fast_total:.2f}x")
    for stage in ("sam_encoder", "sam_masks", "clip_naming"):
        stage_line(stage, naive.timer.seconds[stage], fast.timer.seconds[stage], n)
    print(f"  {'store_writes':<28} production {store_seconds / n:8.3f} s/img")
    compare("sam route", scores_of(naive_out), scores_of(fast_out))

    proposals = grid_proposals(images, args.synthetic_masks)
    arrays = [np.asarray(image) for image in images]
    start = time.perf_counter()
    naive_classes = [naive.name_masks([a], [p], [im])[0][0] for a, p, im in zip(arrays, proposals, images)]
    naive_naming = time.perf_counter() - start
    start = time.perf_counter()
    fast_classes, _ = fast.name_masks(arrays, proposals, images)
    fast_naming = time.perf_counter() - start
    crops = args.synthetic_masks * n
    print(f"clip naming at {args.synthetic_masks} masks/image ({crops} crops): naive {crops / naive_naming:.1f} "
          f"crops/s, production {crops / fast_naming:.1f} crops/s (incl. {n} whole-image embeddings), "
          f"ratio {naive_naming / fast_naming:.2f}x")
    agree = sum(int((a == b).sum()) for a, b in zip(naive_classes, fast_classes))
    print(f"  masks named alike: {agree} of {crops}")


def bench_maskformer(args, images: list[Image.Image]) -> None:
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

    from curation.locatability import ADE20K_CLASSES
    from curation.segmenters.maskformer import MaskFormerSegmenter

    config = MaskFormerConfig(num_labels=150, id2label=dict(enumerate(ADE20K_CLASSES)))
    model = seeded(MaskFormerForInstanceSegmentation, config).eval()
    processor = MaskFormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048})
    n = len(images)
    naive = MaskFormerSegmenter(model, processor, identity="random", dtype="float32", batch_size=1)
    start = time.perf_counter()
    naive_out = [naive.segment([image])[0] for image in images]
    naive_seconds = time.perf_counter() - start
    fast = MaskFormerSegmenter(model, processor, identity="random", dtype="auto", batch_size=n)
    start = time.perf_counter()
    fast_out = fast.segment(images)
    fast_seconds = time.perf_counter() - start
    print(f"maskformer route: {n} images, MaskFormer Swin-B (random weights), production dtype {fast.dtype}")
    print(f"  naive {n / naive_seconds:.4f} images/s, production {n / fast_seconds:.4f} images/s, "
          f"ratio {naive_seconds / fast_seconds:.2f}x")
    for stage in ("segmentation_model", "post_processing"):
        stage_line(stage, naive.timer.seconds[stage], fast.timer.seconds[stage], n)
    compare("maskformer route", scores_of(naive_out), scores_of(fast_out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2, help="images through the sam route")
    parser.add_argument("--size", default="512x384")
    parser.add_argument("--points-per-side", type=int, default=Settings().sam_points_per_side)
    parser.add_argument("--synthetic-masks", type=int, default=48)
    parser.add_argument("--maskformer-n", type=int, default=2)
    parser.add_argument("--skip-maskformer", action="store_true")
    parser.add_argument("--skip-sam", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = map(int, args.size.split("x"))
    device = resolve_device("auto")
    print(f"device {device}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
          f"auto dtype {resolve_dtype('auto', device)}")
    images = bench_images(max(args.n, args.maskformer_n), (width, height))
    if not args.skip_sam:
        bench_sam(args, images[: args.n])
    if not args.skip_maskformer:
        bench_maskformer(args, images[: args.maskformer_n])


if __name__ == "__main__":
    main()
