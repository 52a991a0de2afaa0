"""open_clip, loaded once per process: names SAM masks, embeds images for clue pairing and near-duplicate removal.

Real weights come from settings (`clip_model` + `clip_pretrained`: a pretrained tag such as `laion2b_s34b_b79k`, a
local checkpoint file, or `clip_model=local-dir:/path` for a saved open_clip folder). `demo_models` builds a tiny
random-weight model from a config shipped in the package, because weights cannot be downloaded everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geocurate.device import resolve_device, resolve_dtype
from curation.files import file_digest

TINY_CLIP_CONFIG = Path(__file__).with_name("data") / "tiny_clip.json"
DEMO_SEED = 0


@dataclass
class ClipModel:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    version: str  # short hash naming the weights; part of every scorer/embedding version

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image], batch_size: int = 128) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(images), dim)."""
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
            out.append(self.encode_pixels(pixels))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        features = self.model.encode_image(pixels.to(self.device, self.dtype))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size]).to(self.device)
            features = self.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else 0

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_clip(model_name: str, pretrained: str | None, demo: bool, device: str = "auto",
               dtype: str = "auto") -> ClipModel:
    import open_clip

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if demo:
        open_clip.add_model_config(TINY_CLIP_CONFIG)
        model_name, pretrained = TINY_CLIP_CONFIG.stem, None
        torch.manual_seed(DEMO_SEED)
        identity = f"demo:{model_name}:seed{DEMO_SEED}"
    elif pretrained and Path(pretrained).is_file():
        identity = f"{model_name}:sha256={file_digest(Path(pretrained))}"
    else:
        identity = f"{model_name}:{pretrained}"
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None)
    model.eval().to(torch_device, torch_dtype)
    tokenizer = open_clip.get_tokenizer(model_name)
    version = hashlib.sha256(f"{identity}:{torch_dtype}".encode()).hexdigest()[:12]
    return ClipModel(model, preprocess, tokenizer, torch_device, torch_dtype, version)


@lru_cache(maxsize=2)
def _cached_clip(model_name: str, pretrained: str | None, demo: bool, device: str, dtype: str) -> ClipModel:
    return build_clip(model_name, pretrained, demo, device, dtype)


def load_clip(settings) -> ClipModel:
    """The process-wide CLIP model for these settings (loaded once; workers call it at process start)."""
    return _cached_clip(settings.clip_model, settings.clip_pretrained, settings.demo_models, settings.device,
                        settings.score_dtype)
