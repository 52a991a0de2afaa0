"""Seconds per LoRA training step of the tiny demo Qwen2-VL, and where they go: the bare optimiser step on a batch
built once (baseline), the collator that builds each batch (two processor passes per example), and the whole stage
through `training.stages.train_stage` (Trainer, data loading, checkpoints), all measured in this run.

    .venv/bin/python bench/train_step.py [--steps 20] [--batch 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from peft import get_peft_model

    from tests.training_exports import build_export
    from training.config import TrainingConfig
    from training.data import AnswerOnlyCollator, ExampleDataset, load_examples
    from training.demo_model import build_demo_model
    from training.model_family import family_for
    from training.stages import lora_config

    work = Path(tempfile.mkdtemp(prefix="geocurate-bench-"))
    os.environ.update(GEOCURATE_DATABASE_URL=f"sqlite:///{work / 'store.db'}", GEOCURATE_DEMO_MODELS="true",
                      GEOCURATE_DATA_DIR=str(work / "data"), GEOCURATE_ADAPTERS_DIR=str(work / "adapters"))
    from db.migrate import upgrade
    from geocurate.settings import reload_settings
    from training.demo_model import demo_model_dir

    settings = reload_settings()
    upgrade(settings.database_url)
    model_dir = str(build_demo_model(demo_model_dir(settings)))
    export = build_export(work / "export", train=args.batch * 2, val=0, test=0, reasoning=0)
    config = TrainingConfig(lora_rank=8, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2, batch_size=args.batch,
                            gradient_accumulation=1, max_pixels=112 * 112, min_pixels=56 * 56, precision="fp32",
                            max_steps=args.steps, save_steps=10_000, logging_steps=10_000, warmup_ratio=0.0)

    family = family_for(model_dir)
    processor = family.load_processor(model_dir, config.min_pixels, config.max_pixels)
    examples, _ = load_examples(export, "location")
    dataset = ExampleDataset(examples, export)
    collator = AnswerOnlyCollator(processor, family, config.max_length)
    items = [dataset[i] for i in range(args.batch)]

    started = time.perf_counter()
    for _ in range(args.steps):
        batch = collator(items)
    collate = (time.perf_counter() - started) / args.steps

    model = get_peft_model(family.load_model(model_dir, torch.float32, "cpu"), lora_config(config, family))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    model(**batch).loss.backward()  # warm-up
    optimiser.zero_grad()
    started = time.perf_counter()
    for _ in range(args.steps):
        model(**batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    bare = (time.perf_counter() - started) / args.steps

    from training.stages import train_stage

    result = train_stage(export, "location", settings=settings, config=config)
    stage = result.metrics["seconds_per_step"]

    tokens = batch["input_ids"].shape[1]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"tiny Qwen2-VL, batch {args.batch} x {tokens} tokens, {args.threads} threads, {args.steps} steps "
          f"(load average {load} on {os.cpu_count()} cores)")
    print(f"bare optimiser step (baseline): {bare:.4f} s/step")
    print(f"collator (batch building):      {collate:.4f} s/batch")
    print(f"train_stage (Trainer, whole):   {stage:.4f} s/step  = {stage / bare:.1f}x the bare step")


if __name__ == "__main__":
    main()
