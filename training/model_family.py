"""What differs between vision-language model families, and nothing else: how a (prompt, image, answer) becomes chat
text, how the image processor is sized, and which layers form the vision tower. Training, inference and evaluation
only talk to a `ModelFamily`, so supporting another transformers VLM is one small subclass here.

Qwen2-VL (and Qwen2.5-VL, same layout) is the default family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


def base_model_path(settings) -> str:
    """The base model to load: settings.vlm_model (hub id or local path), or the tiny demo model when demo_models."""
    if settings.demo_models:
        from training.demo_model import build_demo_model, demo_model_dir

        return str(Path(build_demo_model(demo_model_dir(settings))).resolve())
    # A local folder is recorded (training_runs.base_model, stage.json) as an absolute path, so the record says
    # which weights were meant whatever directory the command ran in; a hub id stays as it is.
    local = Path(settings.vlm_model).expanduser()
    return str(local.resolve()) if local.exists() else settings.vlm_model


@dataclass
class ModelFamily:
    """Generic transformers image-text-to-text model with a chat template that accepts {"type": "image"} parts."""

    name: ClassVar[str] = "generic"
    vision_module_prefixes: ClassVar[tuple[str, ...]] = ("visual", "vision_tower", "vision_model")
    vision_lora_targets: ClassVar[list[str]] = []

    def messages(self, prompt: str, answer: str | None = None) -> list[dict[str, Any]]:
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        if answer is None:
            return [user]
        return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]

    def prompt_text(self, processor, prompt: str) -> str:
        """Chat text up to where the assistant starts answering."""
        return processor.apply_chat_template(self.messages(prompt), add_generation_prompt=True, tokenize=False)

    def training_text(self, processor, prompt: str, answer: str) -> str:
        """Chat text with the answer. Built as prompt_text + answer + end-of-turn so that the prompt is an exact
        prefix, whatever the template does to a finished conversation (some strip or re-indent it)."""
        return self.prompt_text(processor, prompt) + answer + self.end_of_turn(processor)

    def end_of_turn(self, processor) -> str:
        return processor.tokenizer.eos_token or ""

    def size_processor(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Bound the image size (and so the image tokens per example); families without dynamic sizing ignore it."""

    def is_vision_parameter(self, name: str) -> bool:
        return any(f".{prefix}." in f".{name}." for prefix in self.vision_module_prefixes)

    def load_processor(self, path: str, min_pixels: int | None = None, max_pixels: int | None = None):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        self.size_processor(processor, min_pixels, max_pixels)
        processor.tokenizer.padding_side = "left"  # generation appends on the right
        return processor

    def load_model(self, path: str, dtype, device):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        return model.to(device)


@dataclass
class Qwen2VLFamily(ModelFamily):
    name: ClassVar[str] = "qwen2_vl"
    vision_module_prefixes: ClassVar[tuple[str, ...]] = ("visual",)
    # Vision blocks: attn.qkv (fused), attn.proj, mlp.fc1, mlp.fc2; names the language model does not use.
    vision_lora_targets: ClassVar[list[str]] = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]

    def end_of_turn(self, processor) -> str:
        return "<|im_end|>\n"

    def size_processor(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        # Qwen2-VL resizes each image to between min_pixels and max_pixels (one token per 28x28 pixels), kept in
        # the image processor's size as shortest_edge / longest_edge.
        image_processor = processor.image_processor
        size = dict(image_processor.size)
        if min_pixels:
            size["shortest_edge"] = min_pixels
        if max_pixels:
            size["longest_edge"] = max_pixels
        image_processor.size = type(image_processor.size)(**size)

FAMILIES: dict[str, type[ModelFamily]] = {"qwen2_vl": Qwen2VLFamily, "qwen2_5_vl": Qwen2VLFamily}


def family_for(path: str) -> ModelFamily:
    """The family of a model, from its config's model_type; unknown types get the generic family."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    return FAMILIES.get(model_type, ModelFamily)()

