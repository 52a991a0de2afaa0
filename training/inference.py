"""Answering "where is this?" with the base model and the trained adapters, applied in training order: the reasoning
adapter merged into the base, then the location adapter merged on top (what stage 2 was trained against).

The model is loaded once per process and per adapters folder (reloaded when an adapter file changes). A batch never
fails because of one answer or one image: bad JSON is repaired or kept as an unparsed Prediction, and an unreadable
image becomes a Prediction with its error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from geocurate.errors import UserError
from geocurate.export_format import PROMPT
from training.answers import Prediction, parse_answer
from training.config import TrainingConfig, config_from_settings
from training.stages import ADAPTER_WEIGHTS, STAGES, adapter_dir, has_adapter, resolve_precision, torch_dtype

log = logging.getLogger(__name__)


@dataclass
class GeoModel:
    model: Any
    processor: Any
    family: Any
    device: Any
    config: TrainingConfig
    adapters: list[str]  # adapter folders merged in, in order; empty for the base model

    def generate(self, images: list[Image.Image], prompt: str = PROMPT) -> list[str]:
        import torch

        text = self.family.prompt_text(self.processor, prompt)
        inputs = self.processor(text=[text] * len(images), images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def predict(self, images: Sequence[Image.Image | str | Path], prompt: str = PROMPT) -> list[Prediction]:
        """One Prediction per input, in order. Images are opened one batch at a time (a test split may be large)."""
        predictions: list[Prediction] = []
        size = max(self.config.eval_batch_size, 1)
        for start in range(0, len(images), size):
            chunk: list[Prediction | None] = []
            opened: list[tuple[int, Image.Image]] = []
            for index, item in enumerate(images[start : start + size]):
                try:
                    opened.append((index, to_rgb(item)))
                    chunk.append(None)
                except (OSError, ValueError) as exc:
                    chunk.append(Prediction(raw="", parsed=False, error=f"unreadable image: {exc}"))
            if opened:
                for (index, _), text in zip(opened, self.generate([image for _, image in opened], prompt)):
                    chunk[index] = parse_answer(text.strip())
            predictions.extend(chunk)  # type: ignore[arg-type]
        return predictions


def to_rgb(item: Image.Image | str | Path) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(item) as image:
        return image.convert("RGB")


def adapter_chain(adapters_dir: Path) -> list[Path]:
    return [adapter_dir(adapters_dir, stage) for stage in STAGES if has_adapter(adapter_dir(adapters_dir, stage))]


def inference_config(chain: list[Path], settings) -> TrainingConfig:
    """The last adapter's own config (image size and generation budget as trained), else the settings' one."""
    for path in reversed(chain):
        try:
            return TrainingConfig.load(path)
        except (OSError, ValueError):
            continue
    return config_from_settings(settings)


def build_geo_model(base_path: str, chain: list[Path], config: TrainingConfig, device_name: str) -> GeoModel:
    from geocurate.device import resolve_device
    from training.model_family import family_for

    device = resolve_device(device_name)
    family = family_for(base_path)
    processor = family.load_processor(base_path, config.min_pixels, config.max_pixels)
    model = family.load_model(base_path, dtype=torch_dtype(resolve_precision(config, device)), device=device)
    if chain:
        from peft import PeftModel

        for path in chain:
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model.eval()
    return GeoModel(model, processor, family, device, config, [str(p) for p in chain])


_LOADED: dict[tuple, GeoModel] = {}


def load_geo_model(adapters_dir: Path | None, settings, base_only: bool = False) -> GeoModel:
    """The base model with every trained adapter of `adapters_dir` (None: settings.adapters_dir) merged in."""
    from training.model_family import base_model_path

    adapters_dir = Path(adapters_dir or settings.adapters_dir).resolve()
    chain = [] if base_only else adapter_chain(adapters_dir)
    if not base_only and not chain:
        raise UserError(
            f"no trained adapters in {adapters_dir}: run `geocurate train EXPORT` first, or evaluate with --base-only"
        )
    base_path = base_model_path(settings)
    stamps = tuple((str(p), (p / ADAPTER_WEIGHTS).stat().st_mtime_ns) for p in chain if (p / ADAPTER_WEIGHTS).exists())
    key = (base_path, stamps, base_only, settings.device)
    if key not in _LOADED:
        _LOADED.clear()  # one model per process: a new adapter set replaces the old one
        log.info("loading %s with adapters %s", base_path, [p.name for p in chain] or "none")
        _LOADED[key] = build_geo_model(base_path, chain, inference_config(chain, settings), settings.device)
    return _LOADED[key]


def predict(images: Sequence[Image.Image | str | Path], adapters_dir: Path | None, settings,
            base_only: bool = False) -> list[Prediction]:
    """Country, city and reasons for each image (PIL images or paths); see Prediction for unparsed answers."""
    return load_geo_model(adapters_dir, settings, base_only).predict(images)
