"""Answering "where is this?" with the base model and the trained adapters, applied in training order: the reasoning
adapter merged into the base, then the location adapter merged on top (what stage 2 was trained against).

The adapters are the named export's own set (`<adapters_dir>/<export>/`, or a folder given), and each stage folder is
checked against the training run that wrote it before it is loaded (training/adapters.py): weights of another export,
or files changed since their run, are refused rather than silently answering. The model is loaded once per process
and per adapter set (reloaded when an adapter file changes). A batch never fails because of one answer or one image:
bad JSON is repaired or kept as an unparsed Prediction, and an unreadable image becomes a Prediction with its error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from geocurate.errors import UserError
from geocurate.export_format import PROMPT
from training.answers import Prediction, parse_answer
from training.config import TrainingConfig, config_from_settings
from training.adapters import AdapterCheck, check_adapter, check_stacking
from training.stages import STAGES, adapter_dir, has_adapter, resolve_adapter_set, resolve_precision, torch_dtype

log = logging.getLogger(__name__)


@dataclass
class GeoModel:
    model: Any
    processor: Any
    family: Any
    device: Any
    config: TrainingConfig
    adapters: list[str]  # adapter folders merged in, in order; empty for the base model
    checks: list[AdapterCheck] = field(default_factory=list)  # the training run behind each adapter folder
    base_path: str | None = None  # hub id or absolute local path of the base model

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
                except (OSError, ValueError, Image.DecompressionBombError) as exc:
                    chunk.append(Prediction(raw="", parsed=False, error=f"unreadable image: {exc}", unreadable=True))
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


def adapter_chain(adapter_set: Path) -> list[Path]:
    return [adapter_dir(adapter_set, stage) for stage in STAGES if has_adapter(adapter_dir(adapter_set, stage))]


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
    return GeoModel(model, processor, family, device, config, [str(p) for p in chain], base_path=base_path)


_LOADED: dict[tuple, GeoModel] = {}


def load_geo_model(export_name: str, settings, adapters_dir: Path | None = None,
                   base_only: bool = False) -> GeoModel:
    """The base model with every trained adapter of the export's adapter set merged in: `adapters_dir` when given
    (a set folder with reasoning/ and location/ inside), else `<settings.adapters_dir>/<export_name>/`. Each adapter
    must belong to `export_name` and match its training run's recorded sha256 (AdapterMismatch otherwise)."""
    from training.model_family import base_model_path

    adapter_set = resolve_adapter_set(adapters_dir, export_name, settings)
    chain = [] if base_only else adapter_chain(adapter_set)
    if not base_only and not chain:
        raise UserError(
            f"no trained adapters for export {export_name!r} in {adapter_set}: run `geocurate train {export_name}` "
            f"first, or evaluate with --base-only"
        )
    checks = [check_adapter(path, export_name, settings.database_url) for path in chain]
    check_stacking(checks)
    base_path = base_model_path(settings)
    for check in checks:
        if check.base_model and check.base_model != base_path:
            log.warning("%s was trained on %s; loading it on %s", check.path, check.base_model, base_path)
    stamps = tuple((str(check.path), check.sha256) for check in checks)  # the checked content, not mtimes
    key = (base_path, stamps, base_only, settings.device)
    if key not in _LOADED:
        _LOADED.clear()  # one model per process: a new adapter set replaces the old one
        log.info("loading %s with adapters %s", base_path, [p.name for p in chain] or "none")
        _LOADED[key] = build_geo_model(base_path, chain, inference_config(chain, settings), settings.device)
    _LOADED[key].checks = checks
    return _LOADED[key]


def predict(images: Sequence[Image.Image | str | Path], export_name: str, settings, adapters_dir: Path | None = None,
            base_only: bool = False) -> list[Prediction]:
    """Country, city and reasons for each image (PIL images or paths) from the export's adapters; see Prediction
    for unparsed answers."""
    return load_geo_model(export_name, settings, adapters_dir, base_only).predict(images)
