"""The contract between exports (curation/export writes) and training (training/ reads).

An export folder:

    <export>/manifest.json
    <export>/images/<sha256><ext>          symlinks or copies of the source images
    <export>/location/{train,val,test}.jsonl
    <export>/reasoning/train.jsonl

Each JSONL line is one `Example`. `image` is relative to the export folder, so an export can be moved or copied to a
training machine as one directory. The answer is what the model must learn to say, as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROMPT = (
    "Where was this street view taken? Answer in JSON with the keys "
    '"country", "city" and "reasons".'
)
LOCATION_DIR = "location"
REASONING_DIR = "reasoning"
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass
class Answer:
    country: str | None  # English country name, e.g. "Poland"
    city: str | None
    reasons: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass
class Example:
    id: str
    image: str  # path relative to the export folder
    prompt: str
    answer: Answer
    country_code: str | None = None  # ISO 3166-1 alpha-2 truth, for evaluation
    city: str | None = None
    lat: float | None = None
    lon: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_line(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_line(cls, line: str) -> "Example":
        data = json.loads(line)
        data["answer"] = Answer(**data["answer"])
        return cls(**data)


def location_file(export_dir: Path, split: str) -> Path:
    return Path(export_dir) / LOCATION_DIR / f"{split}.jsonl"


def reasoning_file(export_dir: Path) -> Path:
    return Path(export_dir) / REASONING_DIR / "train.jsonl"
