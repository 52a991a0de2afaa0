"""Training examples read from an export folder, and the collator that turns them into model inputs whose loss
covers the answer tokens only (prompt, image tokens and padding are labelled -100).

A bad line or an unreadable image is returned as a `Rejected` (the caller quarantines it); it never stops a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from geocurate.export_format import Example, location_file, reasoning_file

IGNORE_INDEX = -100
# Sequence-shaped processor outputs, padded per example; everything else (pixel_values, image_grid_thw) is
# concatenated along the first dimension, which is how the processor itself batches images.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class Rejected:
    reference: str  # file:line
    reason: str
    detail: str


def split_file(export_dir: Path, dataset: str, split: str) -> Path:
    if dataset == "reasoning":
        return reasoning_file(export_dir)
    return location_file(export_dir, split)


def load_examples(export_dir: Path, dataset: str, split: str = "train") -> tuple[list[Example], list[Rejected]]:
    """The examples of one export file whose line parses and whose image opens; the others as Rejected."""
    export_dir = Path(export_dir)
    path = split_file(export_dir, dataset, split)
    examples: list[Example] = []
    rejected: list[Rejected] = []
    if not path.exists():
        return examples, rejected
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            reference = f"{path}:{number}"
            try:
                example = Example.from_line(line)
            except (ValueError, TypeError, KeyError) as exc:
                rejected.append(Rejected(reference, "bad_training_example", str(exc)))
                continue
            problem = image_problem(export_dir / example.image)
            if problem:
                rejected.append(Rejected(reference, "unreadable_image", f"{example.image}: {problem}"))
                continue
            examples.append(example)
    return examples, rejected


def image_problem(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return str(exc) or type(exc).__name__
    return None


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class ExampleDataset(torch.utils.data.Dataset):
    """(image, prompt, answer text) per example; images are opened lazily, one at a time."""

    def __init__(self, examples: list[Example], export_dir: Path):
        self.examples = examples
        self.export_dir = Path(export_dir)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        return {
            "id": example.id,
            "image": open_image(self.export_dir / example.image),
            "prompt": example.prompt,
            "answer": example.answer.to_json(),
        }


class AnswerOnlyCollator:
    """Builds a right-padded batch with labels on the answer (and its end-of-turn token) only.

    Each example goes through the processor twice, with and without the answer, and the prompt's token count marks
    where the labels start: that holds for any chat template and any image-token expansion."""

    def __init__(self, processor, family, max_length: int):
        self.processor = processor
        self.family = family
        self.max_length = max_length
        self.pad_token_id = processor.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = processor.tokenizer.eos_token_id

    def encode(self, item: dict[str, Any]) -> dict[str, torch.Tensor]:
        prompt_text = self.family.prompt_text(self.processor, item["prompt"])
        full_text = self.family.training_text(self.processor, item["prompt"], item["answer"])
        prompt = self.processor(text=[prompt_text], images=[item["image"]], return_tensors="pt")
        full = self.processor(text=[full_text], images=[item["image"]], return_tensors="pt")
        prompt_length = prompt["input_ids"].shape[1]
        if not torch.equal(full["input_ids"][0, :prompt_length], prompt["input_ids"][0]):
            raise ValueError(f"example {item['id']}: the chat template does not keep the prompt as a prefix")
        if prompt_length >= self.max_length:
            raise ValueError(
                f"example {item['id']}: prompt and image take {prompt_length} tokens, max_length is {self.max_length};"
                " raise max_length or lower max_pixels"
            )
        encoded = {key: value for key, value in full.items()}
        for key in SEQUENCE_KEYS:
            if key in encoded:
                encoded[key] = encoded[key][0, : self.max_length]
        labels = encoded["input_ids"].clone()
        labels[:prompt_length] = IGNORE_INDEX
        encoded["labels"] = labels
        return encoded

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(item) for item in items]
        length = max(e["input_ids"].shape[0] for e in encoded)
        pad_values = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}
        batch: dict[str, torch.Tensor] = {}
        for key in encoded[0]:
            if key in SEQUENCE_KEYS or key == "labels":
                rows = []
                for e in encoded:
                    row = e[key]
                    padding = row.new_full((length - row.shape[0],), pad_values.get(key, 0))
                    rows.append(torch.cat([row, padding]))
                batch[key] = torch.stack(rows)
            else:
                batch[key] = torch.cat([e[key] for e in encoded])
        return batch

