"""The `maskformer` segmenter: a transformers semantic-segmentation model trained on ADE20K labels every pixel
directly (the paper's own route). Works with MaskFormer / Mask2Former (universal segmentation heads) and SegFormer /
BEiT / UperNet-style heads, by hub id or local folder (`maskformer_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geocurate.device import resolve_device, resolve_dtype
from curation.locatability import NUM_CLASSES
from curation.scoring import to_working_size
from curation.segmenters.base import Segmentation, StageTimer, folder_digest, ratios_from_label_map
from geocurate.errors import UserError


def load_segmentation_model(name_or_path: str, demo: bool) -> tuple[torch.nn.Module, Any, str]:
    """(model, image processor, identity). Local folders are identified by the hash of their weight files."""
    if demo:
        from curation.demo_models import DEMO_SEED, build_tiny_segformer

        model, processor = build_tiny_segformer()
        return model, processor, f"demo:tiny-segformer:seed{DEMO_SEED}"
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(name_or_path)
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load segmentation model {name_or_path!r} ({str(exc).splitlines()[0]}): set "
            "GEOCURATE_MASKFORMER_MODEL to a local folder, or GEOCURATE_DEMO_MODELS=true"
        ) from None
    if config.num_labels != NUM_CLASSES:
        raise UserError(f"segmentation model {name_or_path!r} has {config.num_labels} labels; an ADE20K "
                        f"(SceneParse150) model with {NUM_CLASSES} is needed")
    auto = (AutoModelForUniversalSegmentation if config.model_type in MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES
            else AutoModelForSemanticSegmentation)
    model = auto.from_pretrained(name_or_path).eval()
    folder = Path(name_or_path)
    if folder.is_dir():
        identity = f"local:{config.model_type}:sha256={folder_digest(folder)}"
    else:
        identity = f"hub:{name_or_path}:{getattr(config, '_commit_hash', None) or 'unknown-revision'}"
    return model, processor, identity


class MaskFormerSegmenter:
    def __init__(self, model: torch.nn.Module, processor: Any, *, identity: str, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, max_side: int | None = None) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype)
        self.processor = processor
        self.batch_size = batch_size
        self.max_side = max_side
        self.timer = StageTimer()
        self.params: dict[str, Any] = {"segmenter": "maskformer", "model": identity, "dtype": str(self.dtype),
                                       "max_side": max_side}

    @classmethod
    def from_settings(cls, settings, **overrides: Any) -> "MaskFormerSegmenter":
        model, processor, identity = load_segmentation_model(settings.maskformer_model, settings.demo_models)
        # On a CPU one image per forward pass was faster than batches (bench/score_throughput.py: 0.38x batched).
        on_gpu = resolve_device(settings.device).type == "cuda"
        options = dict(identity=identity, device=settings.device, dtype=settings.score_dtype,
                       batch_size=settings.score_batch_size if on_gpu else 1, max_side=settings.score_max_side)
        options.update(overrides)
        return cls(model, processor, **options)

    @torch.inference_mode()
    def segment(self, images: list[Image.Image]) -> list[Segmentation]:
        """Labels are upsampled to the working size, not the file's: 150 float channels per pixel are what cost memory
        here (4000x3000 would take 7 GB)."""
        results: list[Segmentation] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [to_working_size(im, self.max_side) for im in images[start : start + self.batch_size]]
            with self.timer.stage("segmentation_model"):
                inputs = self.processor(images=chunk, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, self.dtype)
                outputs = self.model(pixel_values=pixels)
            with self.timer.stage("post_processing"):
                outputs = _to_float(outputs)
                maps = self.processor.post_process_semantic_segmentation(
                    outputs, target_sizes=[(im.height, im.width) for im in chunk]
                )
                results.extend(Segmentation(ratios_from_label_map(np.asarray(m.cpu())), size=im.size)
                               for m, im in zip(maps, chunk))
        return results


def _to_float(outputs: Any) -> Any:
    """Post-processing (softmax, interpolation) in fp32 even when the model ran in bf16."""
    for key, value in list(outputs.items()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            outputs[key] = value.float()
    return outputs
