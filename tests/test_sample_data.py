"""The sample set is what the demo and the e2e test run on: it must be reproducible, varied and carry its bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError
from typer.testing import CliRunner

from geocurate.errors import UserError
from geocurate.cli.sample_data import COUNTRIES, generate_sample


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_sample(tmp_path / "a", n_images=12, n_clues=10, seed=3)
    generate_sample(tmp_path / "b", n_images=12, n_clues=10, seed=3)
    generate_sample(tmp_path / "c", n_images=12, n_clues=10, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_default_sample_spans_countries_and_cities_with_real_coordinates(tmp_path):
    sample = generate_sample(tmp_path)
    assert len(sample.image_files) == 50 and sample.clue_lines == 30
    assert len(sample.countries) >= 8 and len(sample.cities) >= 20
    with open(sample.metadata_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["filename"] for row in rows] == sample.image_files
    centres = {city: (lat, lon) for country in COUNTRIES for city, lat, lon in country.cities}
    for row in rows:
        if row["filename"] in sample.invalid_coordinate_rows:
            continue
        lat, lon = centres[row["city"]]
        assert abs(float(row["lat"]) - lat) <= 0.06 and abs(float(row["lon"]) - lon) <= 0.06, row


def test_images_are_street_sized_and_locatability_varies(tmp_path):
    sample = generate_sample(tmp_path, n_images=40, n_clues=8)
    assert sample.uninformative_images, "plain images (wall, sky, fog) are what makes locatability vary"
    assert len(sample.uninformative_images) < len(sample.readable_images) / 2
    for name in sample.readable_images:
        with Image.open(sample.images_dir / name) as image:
            image.load()
            assert 300 <= image.width <= 640 and image.mode == "RGB"


def test_bad_input_is_there_for_quarantine(tmp_path):
    sample = generate_sample(tmp_path)
    assert len(sample.corrupt_images) == 1
    with pytest.raises((UnidentifiedImageError, OSError)):
        with Image.open(sample.images_dir / sample.corrupt_images[0]) as image:
            image.load()
    with open(sample.metadata_csv, newline="", encoding="utf-8") as handle:
        rows = {row["filename"]: row for row in csv.DictReader(handle)}
    (bad_row,) = [rows[name] for name in sample.invalid_coordinate_rows]
    assert not -90 <= float(bad_row["lat"]) <= 90
    assert all(-90 <= float(row["lat"]) <= 90 for name, row in rows.items() if name not in sample.invalid_coordinate_rows)

    lines = sample.clues_jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == sample.clue_lines
    broken = []
    records = {}
    for number, line in enumerate(lines, start=1):
        try:
            records[number] = json.loads(line)
        except json.JSONDecodeError:
            broken.append(number)
    assert broken == sample.malformed_clue_lines == [sample.malformed_clue_lines[0]]
    assert sample.placeless_clue_lines and sample.ambiguous_clue_lines
    assert all("Georgia" in records[n]["text"] for n in sample.ambiguous_clue_lines)
    (duplicate,) = sample.duplicate_clue_lines
    normalised = {n: " ".join(r["text"].lower().split()) for n, r in records.items()}
    assert list(normalised.values()).count(normalised[duplicate]) == 2
    paired = [sample.clues_jsonl.parent / r["image"] for r in records.values() if "image" in r]
    assert paired and all(path.is_file() for path in paired), "image paths are relative to clues.jsonl"
    assert {path.name for path in paired} <= set(sample.readable_images) - set(sample.uninformative_images)
    assert {r["country"] for r in records.values() if "country" in r} <= {c.code for c in COUNTRIES}


def test_sample_command_writes_the_set(tmp_path):
    from geocurate.cli import app

    result = CliRunner().invoke(app, ["sample", str(tmp_path / "out"), "--images", "8", "--clues", "6"])
    assert result.exit_code == 0, result.output
    assert "8 images (1 corrupt" in result.output
    assert len(list((tmp_path / "out" / "images").iterdir())) == 8
    assert len((tmp_path / "out" / "clues.jsonl").read_text().splitlines()) == 6


def test_too_small_a_sample_is_refused(tmp_path):
    with pytest.raises(UserError, match="n_images"):
        generate_sample(tmp_path, n_images=2)
