"""Tiny export folders for the training tests, written through the export contract (geocurate/export_format.py)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from geocurate.export_format import MANIFEST, PROMPT, Answer, Example, location_file, reasoning_file

# (country code, country name, city, lat, lon, colour): one colour per place, so a model can tell them apart.
PLACES = [
    ("PL", "Poland", "Krakow", 50.0614, 19.9366, (200, 40, 40)),
    ("DE", "Germany", "Berlin", 52.5200, 13.4050, (40, 200, 40)),
    ("FR", "France", "Paris", 48.8566, 2.3522, (40, 40, 200)),
    ("JP", "Japan", "Tokyo", 35.6895, 139.6917, (200, 200, 40)),
]
REASONS = {
    "PL": "yellow dashed centre lines and Polish diacritics on the signs",
    "DE": "white bollards with a black band and German street signs",
    "FR": "blue street-name plates and white dashed lines",
    "JP": "Japanese script and utility poles crowding the narrow road",
}


def place_image(path: Path, colour: tuple[int, int, int], variant: int) -> None:
    image = Image.new("RGB", (96, 72), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle([8 + variant * 6, 10, 30 + variant * 6, 40], fill=(255 - colour[0], 255 - colour[1], 90))
    image.save(path)


def example(export_dir: Path, split: str, index: int, place, with_reasons: bool) -> Example:
    code, country, city, lat, lon, colour = place
    relative = f"images/{split}-{index}-{code}.png"
    place_image(export_dir / relative, colour, index % 4)
    reasons = REASONS[code] if with_reasons else ""
    return Example(
        id=f"{split}-{index}", image=relative, prompt=PROMPT, answer=Answer(country=country, city=city, reasons=reasons),
        country_code=code, city=city, lat=lat + 0.01 * index, lon=lon - 0.01 * index,
    )


def write_lines(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(e.to_line() + "\n" for e in examples), encoding="utf-8")


def build_export(export_dir: Path, train: int = 8, val: int = 2, test: int = 4, reasoning: int = 8) -> Path:
    export_dir = Path(export_dir)
    (export_dir / "images").mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, "val": val, "test": test}
    for split, count in sizes.items():
        write_lines(location_file(export_dir, split),
                    [example(export_dir, split, i, PLACES[i % len(PLACES)], False) for i in range(count)])
    write_lines(reasoning_file(export_dir),
                [example(export_dir, "reasoning", i, PLACES[i % len(PLACES)], True) for i in range(reasoning)])
    (export_dir / MANIFEST).write_text(json.dumps({"name": export_dir.name, "counts": sizes}))
    return export_dir
