"""The LoRA and training hyper-parameters of one stage: one typed object, saved as JSON next to each adapter so a
trained adapter always says how it was made.

Defaults follow Qwen-VL's LoRA fine-tuning recipe that GeoReasoner builds on (rank 64, alpha 16, dropout 0.05, cosine
schedule, weight decay 0.1, vision tower fixed), with a learning rate suited to LoRA. They are sized for thousands of
examples: on a dozen, batch 2 × 8 accumulation makes one optimiser step per epoch, three in all, and the first is
spent warming the learning rate up from 0. A preset (the `train_preset` setting) swaps in values made for such tiny
exports; overrides then come from a JSON file named by the `training_config` setting, or from code
(`TrainingConfig(...)`, `config.replace(...)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

CONFIG_FILE = "training_config.json"

# Every linear layer of the language model; the vision tower's layers (qkv, proj, fc1, fc2) are not among them.
LANGUAGE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainingConfig:
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (update scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: list(LANGUAGE_LORA_TARGETS),
        metadata={"help": "Module-name suffixes that get LoRA layers (language model only by default)."},
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Keep the vision tower fixed (paper: fix_vit); False adds LoRA to it too."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.01, metadata={"help": "Share of steps spent warming the learning rate up."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training split."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1: use epochs)."})
    batch_size: int = field(default=2, metadata={"help": "Examples per device per forward pass."})
    gradient_accumulation: int = field(default=8, metadata={"help": "Forward passes per optimiser step."})
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto",
        metadata={"help": "auto: bf16 where the device supports it (GPUs with bf16, CPUs with native bf16), else fp32."},
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on big models."})
    max_length: int = field(default=2048, metadata={"help": "Examples longer than this many tokens are truncated."})
    min_pixels: int | None = field(default=None, metadata={"help": "Image-processor minimum pixels (None: model's)."})
    max_pixels: int | None = field(
        default=448 * 448, metadata={"help": "Image-processor maximum pixels; bounds image tokens per example."}
    )
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every this many steps (resume point)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept per stage."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every this many steps."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, dropout and LoRA initialisation."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per answer at inference."})
    eval_batch_size: int = field(default=8, metadata={"help": "Images per generate() call at inference."})

    def replace(self, **changes: Any) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of every knob: a checkpoint is only resumed by a run with the same configuration."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: Path) -> "TrainingConfig":
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text()))


# Presets: changes to the defaults, by name. `small` is for exports of a few dozen to a few hundred examples (a demo,
# a first look at a new country): every example is its own step's batch member (batch 4, no accumulation), so there
# are steps to learn from; no warm-up, which on a handful of steps is most of the run; a constant learning rate 10×
# the default, with a smaller rank (16, alpha 32) that a few examples can fit; 6 epochs; the loss logged every step.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": dict(
        lora_rank=16, lora_alpha=32, learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant", epochs=6.0,
        batch_size=4, gradient_accumulation=1, logging_steps=1, save_steps=50,
    ),
}


def preset_config(name: str) -> TrainingConfig:
    from geocurate.errors import UserError

    if name not in PRESETS:
        raise UserError(f"unknown training preset {name!r}: use one of {', '.join(PRESETS)}")
    return TrainingConfig(**PRESETS[name])


def config_from_settings(settings) -> TrainingConfig:
    """The `train_preset` setting's values (the defaults unless set), overridden by the JSON file the
    `training_config` setting names (a partial dict is fine)."""
    base = preset_config(getattr(settings, "train_preset", None) or "default")
    path = getattr(settings, "training_config", None)
    if not path:
        return base
    from geocurate.errors import UserError

    try:
        overrides = json.loads(Path(path).read_text())
        if not isinstance(overrides, dict):
            raise ValueError("the file must hold one JSON object of TrainingConfig keys")
        return TrainingConfig.from_dict({**base.to_dict(), **overrides})
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read the training config {path}: {exc}") from None
