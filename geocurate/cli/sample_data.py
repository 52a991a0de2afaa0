"""A small, deterministic sample set for the demo, the end-to-end test and benchmarks.

Real street views cannot ship with the repository, so the sample is drawn: skies, roads with lane markings in each
country's colours, sidewalks, buildings, trees, signs and bollards, plus plain images (a blank wall, an empty sky, fog)
so that locatability varies. Coordinates are real city centres with a little jitter, so geo-aware splits and distance
metrics behave as they do on real data. The set also carries the bad input every run must survive — one corrupt
image file, one metadata row with impossible coordinates, one malformed clue line — so the demo shows quarantine.

Layout (the input formats `geocurate ingest images` and `geocurate ingest clues` read):

    <out>/images/street_NNNN.jpg
    <out>/metadata.csv     filename,lat,lon,country_code,city,source   (filename relative to images/)
    <out>/clues.jsonl      {"text", "source", optional "country" (ISO alpha-2), optional "image" (relative to <out>)}

The same seed gives byte-identical files (fixed encoder settings, no timestamps, seeded random streams).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geocurate.errors import UserError

IMAGES_DIR = "images"
METADATA_FILE = "metadata.csv"
CLUES_FILE = "clues.jsonl"
METADATA_COLUMNS = ("filename", "lat", "lon", "country_code", "city", "source")
IMAGE_SOURCE = "geocurate-sample"
CLUE_SOURCE = "geocurate-sample-clues"
JPEG_QUALITY = 88
CITY_JITTER_DEG = 0.05  # about 5 km: images of one city stay in one city
INVALID_LATITUDE = 123.456  # outside [-90, 90]: the metadata row that must be quarantined


@dataclass(frozen=True)
class CountryStyle:
    """What a geo-guesser would look at: line colours, driving side, bollards and signs."""

    code: str
    name: str
    centre_line: tuple[int, int, int]
    edge_line: tuple[int, int, int]
    dashed_centre: bool
    drives_left: bool
    bollard: tuple[tuple[int, int, int], tuple[int, int, int]]  # body, band
    sign: str  # "circle" (European), "diamond" (warning, yellow), "rectangle"
    building_palette: tuple[tuple[int, int, int], ...]
    cities: tuple[tuple[str, float, float], ...]
    clue_facts: tuple[str, ...]


WHITE, YELLOW, RED, BLACK = (240, 240, 235), (235, 195, 40), (200, 30, 30), (25, 25, 25)

COUNTRIES: tuple[CountryStyle, ...] = (
    CountryStyle(
        "US", "United States", YELLOW, WHITE, False, False, (YELLOW, BLACK), "diamond",
        ((150, 90, 70), (190, 180, 160), (120, 120, 125)),
        (("New York", 40.7128, -74.0060), ("Chicago", 41.8781, -87.6298), ("Atlanta", 33.7490, -84.3880)),
        ("Double yellow centre lines and yellow diamond warning signs mean the United States.",
         "Wooden utility poles and wide lanes: this is the USA, probably near Chicago."),
    ),
    CountryStyle(
        "BR", "Brazil", YELLOW, WHITE, True, False, (WHITE, BLACK), "circle",
        ((230, 200, 150), (200, 120, 90), (240, 240, 230)),
        (("São Paulo", -23.5505, -46.6333), ("Rio de Janeiro", -22.9068, -43.1729), ("Brasília", -15.7939, -47.8828)),
        ("Brazil uses a yellow centre line and red soil shows at the roadside.",
         "Portuguese on the shop fronts and a dashed yellow line: Brazil, maybe São Paulo."),
    ),
    CountryStyle(
        "PL", "Poland", WHITE, WHITE, True, False, (RED, WHITE), "circle",
        ((210, 200, 185), (170, 160, 150), (230, 220, 200)),
        (("Warsaw", 52.2297, 21.0122), ("Kraków", 50.0647, 19.9450), ("Gdańsk", 54.3520, 18.6466)),
        ("Polish bollards are red and white with a reflector.",
         "Red and white bollards and Polish diacritics on the sign: Poland, around Kraków."),
    ),
    CountryStyle(
        "GB", "United Kingdom", WHITE, WHITE, True, True, (WHITE, BLACK), "circle",
        ((150, 70, 55), (120, 60, 50), (200, 190, 170)),
        (("London", 51.5074, -0.1278), ("Manchester", 53.4808, -2.2426)),
        ("Cars drive on the left and the kerbs have double yellow lines: United Kingdom.",
         "Red brick terraces and a left-hand drive road, this is England near Manchester."),
    ),
    CountryStyle(
        "JP", "Japan", WHITE, WHITE, False, True, (WHITE, (60, 120, 200)), "rectangle",
        ((220, 220, 215), (180, 185, 190), (140, 140, 150)),
        (("Tokyo", 35.6762, 139.6503), ("Osaka", 34.6937, 135.5023), ("Kyoto", 35.0116, 135.7681)),
        ("Left-hand traffic, dense overhead wires and kanji on the signs: Japan.",
         "Narrow streets with vending machines everywhere point to Japan, likely Osaka."),
    ),
    CountryStyle(
        "FR", "France", WHITE, WHITE, True, False, (WHITE, RED), "circle",
        ((235, 225, 205), (215, 205, 180), (190, 180, 165)),
        (("Paris", 48.8566, 2.3522), ("Lyon", 45.7640, 4.8357), ("Marseille", 43.2965, 5.3698)),
        ("White bollards with a red band are typical of France.",
         "Haussmann facades and French road signs: Paris."),
    ),
    CountryStyle(
        "GE", "Georgia", WHITE, WHITE, True, False, (WHITE, RED), "circle",
        ((190, 170, 150), (160, 150, 140), (210, 200, 190)),
        (("Tbilisi", 41.7151, 44.8271), ("Batumi", 41.6168, 41.6367)),
        ("The Georgian script on the shop signs gives it away: Tbilisi.",
         "Mountains behind Soviet-era blocks and Georgian letters, this is Batumi."),
    ),
    CountryStyle(
        "AU", "Australia", WHITE, WHITE, True, True, (WHITE, RED), "diamond",
        ((200, 170, 130), (170, 140, 110), (230, 215, 190)),
        (("Sydney", -33.8688, 151.2093), ("Melbourne", -37.8136, 144.9631)),
        ("Yellow diamond signs with left-hand traffic: Australia.",
         "Eucalyptus trees and white bollards with a red reflector suggest Australia, maybe Melbourne."),
    ),
    CountryStyle(
        "ZA", "South Africa", WHITE, YELLOW, False, True, (WHITE, BLACK), "circle",
        ((220, 210, 190), (180, 170, 150), (240, 235, 220)),
        (("Cape Town", -33.9249, 18.4241), ("Johannesburg", -26.2041, 28.0473)),
        ("Yellow edge lines and left-hand traffic are South Africa.",
         "Table Mountain in the background: Cape Town, South Africa."),
    ),
    CountryStyle(
        "NO", "Norway", YELLOW, WHITE, True, False, (BLACK, YELLOW), "circle",
        ((170, 40, 35), (230, 200, 120), (240, 240, 235)),
        (("Oslo", 59.9139, 10.7522), ("Bergen", 60.3913, 5.3221)),
        ("Norway has a yellow centre line and black bollards with a yellow reflector.",
         "Wooden houses painted red by a fjord: Bergen in Norway."),
    ),
)

PLACELESS_CLUES = (
    "The road has a dashed centre line and there are trees on both sides.",
    "Look at the sky, it is quite cloudy today.",
    "Nice picture, I guessed wrong again.",
    "The bollards have a reflector near the top.",
    "There is a sidewalk and a few parked cars.",
    "Pay attention to the poles and the shape of the signs.",
)
AMBIGUOUS_CLUES = (
    "This has to be Georgia, look at the red clay by the road.",  # the US state or the country?
    "Georgia again, I always mix it up.",
)


@dataclass
class SampleSet:
    """Where the files are and what a run over them must find (the e2e test and the demo assert these counts)."""

    root: Path
    images_dir: Path
    metadata_csv: Path
    clues_jsonl: Path
    image_files: list[str] = field(default_factory=list)  # every file written, bad ones included
    corrupt_images: list[str] = field(default_factory=list)
    invalid_coordinate_rows: list[str] = field(default_factory=list)  # filenames whose metadata row is invalid
    uninformative_images: list[str] = field(default_factory=list)  # wall / sky / fog: nothing to locate
    clue_lines: int = 0
    malformed_clue_lines: list[int] = field(default_factory=list)  # 1-based line numbers
    duplicate_clue_lines: list[int] = field(default_factory=list)  # same text as an earlier line once normalised
    placeless_clue_lines: list[int] = field(default_factory=list)
    ambiguous_clue_lines: list[int] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)

    @property
    def readable_images(self) -> list[str]:
        return [name for name in self.image_files if name not in self.corrupt_images]

    @property
    def valid_clue_lines(self) -> int:
        return self.clue_lines - len(self.malformed_clue_lines)


def generate_sample(out_dir: Path | str, n_images: int = 50, n_clues: int = 30, seed: int = 0) -> SampleSet:
    """Write images/, metadata.csv and clues.jsonl under out_dir (overwriting earlier sample files) and describe them."""
    if n_images < 4:
        raise UserError("n_images must be at least 4 (one corrupt, one with invalid coordinates, two good)")
    if n_clues < 4:
        raise UserError("n_clues must be at least 4 (one malformed, one duplicate, two good)")
    root = Path(out_dir)
    sample = SampleSet(root, root / IMAGES_DIR, root / METADATA_FILE, root / CLUES_FILE)
    sample.images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    placements = _place_images(rng, n_images)
    rows = _write_images(sample, placements, rng, seed)
    _write_metadata(sample.metadata_csv, rows)
    _write_clues(sample, placements, rng, n_clues)
    sample.countries = sorted({country.code for country, _, _ in placements})
    sample.cities = sorted({city[0] for _, city, _ in placements})
    return sample


# --- placement: which country, city and kind each image gets ------------------------------------------------------

def _place_images(rng: random.Random, n_images: int) -> list[tuple[CountryStyle, tuple[str, float, float], str]]:
    """Cycle through every city so that even a small sample spans many countries and cities."""
    cities = [(country, city) for country in COUNTRIES for city in country.cities]
    rng.shuffle(cities)
    placements = []
    for index in range(n_images):
        country, city = cities[index % len(cities)]
        roll = rng.random()
        kind = "street" if roll < 0.70 else "road" if roll < 0.85 else rng.choice(("wall", "sky", "fog"))
        placements.append((country, city, kind))
    return placements


def _write_images(sample: SampleSet, placements, rng: random.Random, seed: int) -> list[dict[str, str]]:
    corrupt_index = len(placements) - 1
    invalid_index = len(placements) // 2
    noise = np.random.default_rng(seed)
    rows = []
    for index, (country, (city, lat, lon), kind) in enumerate(placements):
        name = f"street_{index:04d}.jpg"
        path = sample.images_dir / name
        if index == corrupt_index:
            path.write_bytes(_corrupt_jpeg_bytes(rng))
            sample.corrupt_images.append(name)
        else:
            image = _draw(kind, country, rng, noise)
            image.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
            if kind in ("wall", "sky", "fog"):
                sample.uninformative_images.append(name)
        sample.image_files.append(name)
        lat = lat + rng.uniform(-CITY_JITTER_DEG, CITY_JITTER_DEG)
        lon = lon + rng.uniform(-CITY_JITTER_DEG, CITY_JITTER_DEG)
        if index == invalid_index:
            lat = INVALID_LATITUDE
            sample.invalid_coordinate_rows.append(name)
        rows.append(dict(filename=name, lat=f"{lat:.6f}", lon=f"{lon:.6f}", country_code=country.code, city=city,
                         source=IMAGE_SOURCE))
    return rows


def _corrupt_jpeg_bytes(rng: random.Random) -> bytes:
    """A JPEG header followed by garbage: looks like an image by name and magic number, but cannot be decoded."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(rng.randrange(256) for _ in range(512))


def _write_metadata(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# --- clues ---------------------------------------------------------------------------------------------------------

def _write_clues(sample: SampleSet, placements, rng: random.Random, n_clues: int) -> None:
    """Mostly place-naming clues (some tied to an image, some with a country), plus placeless and ambiguous ones,
    one duplicate and one malformed line."""
    n_placeless = max(1, n_clues // 6)
    n_ambiguous = min(len(AMBIGUOUS_CLUES), max(0, n_clues // 15))
    n_placed = n_clues - n_placeless - n_ambiguous - 2  # minus the duplicate and the malformed line
    lines: list[str] = []
    kinds: list[str] = []
    unusable = set(sample.corrupt_images) | set(sample.uninformative_images)
    scenes = [i for i, name in enumerate(sample.image_files) if name not in unusable]
    for index in range(max(0, n_placed)):
        country = COUNTRIES[index % len(COUNTRIES)]
        record: dict[str, str] = {"text": country.clue_facts[(index // len(COUNTRIES)) % len(country.clue_facts)],
                                  "source": CLUE_SOURCE}
        if index // len(COUNTRIES) >= len(country.clue_facts):
            record["text"] = f"{record['text']} (round {index // len(COUNTRIES) + 1})"
        matching = [i for i in scenes if placements[i][0].code == country.code]
        if matching and rng.random() < 0.5:
            record["image"] = f"{IMAGES_DIR}/{sample.image_files[rng.choice(matching)]}"  # relative to clues.jsonl
        if rng.random() < 0.5:
            record["country"] = country.code
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
        kinds.append("placed")
    for index in range(n_placeless):
        record = {"text": PLACELESS_CLUES[index % len(PLACELESS_CLUES)], "source": CLUE_SOURCE}
        if index >= len(PLACELESS_CLUES):
            record["text"] += f" ({index + 1})"
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
        kinds.append("placeless")
    for index in range(n_ambiguous):
        lines.append(json.dumps({"text": AMBIGUOUS_CLUES[index], "source": CLUE_SOURCE}, sort_keys=True))
        kinds.append("ambiguous")
    order = list(range(len(lines)))
    rng.shuffle(order)
    lines, kinds = [lines[i] for i in order], [kinds[i] for i in order]
    duplicate = json.loads(lines[0])
    duplicate["text"] = "  " + duplicate["text"].upper() + "  "  # same text once case and spaces are normalised
    duplicate.pop("image", None)
    lines.insert(len(lines) // 2, json.dumps(duplicate, ensure_ascii=False, sort_keys=True))
    kinds.insert(len(kinds) // 2, "duplicate")
    lines.insert(len(lines) // 3, '{"text": "Finnish roads have yellow centre lines", "source": ')  # cut off
    kinds.insert(len(kinds) // 3, "malformed")
    with open(sample.clues_jsonl, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")
    sample.clue_lines = len(lines)
    for number, kind in enumerate(kinds, start=1):
        {"malformed": sample.malformed_clue_lines, "duplicate": sample.duplicate_clue_lines,
         "placeless": sample.placeless_clue_lines, "ambiguous": sample.ambiguous_clue_lines}.get(kind, []).append(number)


# --- drawing -------------------------------------------------------------------------------------------------------

def _draw(kind: str, country: CountryStyle, rng: random.Random, noise: np.random.Generator) -> Image.Image:
    width = rng.randrange(320, 641, 16)
    height = int(width * rng.choice((0.5625, 0.66, 0.75)))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    if kind == "wall":
        _fill(draw, width, height, _jitter(rng, rng.choice(country.building_palette), 20))
        for _ in range(rng.randrange(0, 4)):  # a few stains, nothing to locate
            x, y = rng.randrange(width), rng.randrange(height)
            draw.ellipse((x, y, x + rng.randrange(10, 60), y + rng.randrange(10, 60)),
                         fill=_jitter(rng, (120, 115, 110), 25))
    elif kind == "sky":
        _sky(draw, rng, width, height, height)
    elif kind == "fog":
        _fill(draw, width, height, _jitter(rng, (200, 200, 200), 15))
    else:
        horizon = int(height * rng.uniform(0.38, 0.55))
        _sky(draw, rng, width, height, horizon)
        if kind == "street":
            _buildings(draw, rng, country, width, horizon)
        _road(draw, rng, country, width, height, horizon)
        _trees(draw, rng, width, height, horizon)
        if kind == "street" or rng.random() < 0.5:
            _bollards(draw, rng, country, width, height, horizon)
            _sign(draw, rng, country, width, height, horizon)
    return _add_noise(image, noise)


def _fill(draw: ImageDraw.ImageDraw, width: int, height: int, colour: tuple[int, int, int]) -> None:
    draw.rectangle((0, 0, width, height), fill=colour)


def _jitter(rng: random.Random, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _sky(draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int, horizon: int) -> None:
    top = rng.choice(((70, 130, 210), (120, 150, 190), (150, 155, 165)))
    bottom = (min(255, top[0] + 90), min(255, top[1] + 70), min(255, top[2] + 40))
    for y in range(horizon):
        t = y / max(1, horizon - 1)
        draw.line((0, y, width, y), fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    if horizon < height:
        draw.rectangle((0, horizon, width, height), fill=_jitter(rng, (95, 120, 70), 15))  # verge / grass


def _buildings(draw, rng: random.Random, country: CountryStyle, width: int, horizon: int) -> None:
    x = 0
    while x < width:
        w = rng.randrange(width // 10, width // 4)
        h = rng.randrange(horizon // 4, int(horizon * 0.9))
        colour = _jitter(rng, rng.choice(country.building_palette), 12)
        draw.rectangle((x, horizon - h, x + w, horizon), fill=colour)
        window = _jitter(rng, (60, 70, 90), 10)
        for wy in range(horizon - h + 8, horizon - 12, 18):
            for wx in range(x + 6, x + w - 10, 16):
                draw.rectangle((wx, wy, wx + 7, wy + 9), fill=window)
        x += w + rng.randrange(0, 8)


def _road(draw, rng: random.Random, country: CountryStyle, width: int, height: int, horizon: int) -> None:
    vanish_x = width // 2 + rng.randint(-width // 10, width // 10)
    left, right = -width // 5, width + width // 5
    sidewalk = _jitter(rng, (175, 172, 165), 10)
    draw.polygon([(vanish_x - 4, horizon), (vanish_x + 4, horizon), (width, height), (0, height)], fill=sidewalk)
    draw.polygon([(vanish_x - 2, horizon), (vanish_x + 2, horizon), (right - width // 3, height),
                  (left + width // 3, height)], fill=_jitter(rng, (70, 70, 72), 8))

    def along(t: float, bottom_x: float) -> tuple[float, float]:
        return vanish_x + (bottom_x - vanish_x) * t, horizon + (height - horizon) * t

    for edge_x in (left + width // 3 + width // 30, right - width // 3 - width // 30):
        _stripe(draw, along, edge_x, width, country.edge_line, dashed=False)
    centre_x = width // 2
    _stripe(draw, along, centre_x, width, country.centre_line, dashed=country.dashed_centre)
    if not country.dashed_centre:  # double solid line
        _stripe(draw, along, centre_x + width // 40, width, country.centre_line, dashed=False)


def _stripe(draw, along, bottom_x: float, width: int, colour, dashed: bool) -> None:
    steps = 12
    for i in range(steps):
        if dashed and i % 2:
            continue
        t0, t1 = 0.02 + i / steps, (i + 1) / steps
        (x0, y0), (x1, y1) = along(t0 ** 1.6, bottom_x), along(t1 ** 1.6, bottom_x)
        half0, half1 = max(0.5, width / 160 * t0 ** 1.6), max(0.5, width / 160 * t1 ** 1.6)
        draw.polygon([(x0 - half0, y0), (x0 + half0, y0), (x1 + half1, y1), (x1 - half1, y1)], fill=colour)


def _trees(draw, rng: random.Random, width: int, height: int, horizon: int) -> None:
    for _ in range(rng.randrange(0, 5)):
        x = rng.choice((rng.randrange(0, width // 5), rng.randrange(width * 4 // 5, width)))
        base = rng.randrange(horizon + 5, min(height, horizon + (height - horizon) // 2) + 6)
        size = max(8, (base - horizon) * 2)
        draw.rectangle((x - size // 10, base - size, x + size // 10, base), fill=(90, 60, 35))
        draw.ellipse((x - size // 2, base - size * 2, x + size // 2, base - size // 2),
                     fill=_jitter(rng, (50, 110, 45), 20))


def _bollards(draw, rng: random.Random, country: CountryStyle, width: int, height: int, horizon: int) -> None:
    body, band = country.bollard
    for i in range(rng.randrange(2, 6)):
        t = 0.25 + 0.15 * i
        for side in (-1, 1):
            x = width / 2 + side * width * 0.45 * t
            y = horizon + (height - horizon) * t
            h, w = max(6, 40 * t), max(2, 8 * t)
            draw.rectangle((x - w, y - h, x + w, y), fill=body)
            draw.rectangle((x - w, y - h * 0.8, x + w, y - h * 0.6), fill=band)


def _sign(draw, rng: random.Random, country: CountryStyle, width: int, height: int, horizon: int) -> None:
    x = int(width * rng.choice((0.12, 0.85)))
    base = horizon + (height - horizon) // 3
    top = horizon - (height - horizon) // 3
    draw.rectangle((x - 2, top, x + 2, base), fill=(120, 120, 120))
    r = max(8, width // 30)
    if country.sign == "circle":
        draw.ellipse((x - r, top - r, x + r, top + r), fill=RED)
        draw.ellipse((x - r * 0.7, top - r * 0.7, x + r * 0.7, top + r * 0.7), fill=WHITE)
    elif country.sign == "diamond":
        draw.polygon([(x, top - r), (x + r, top), (x, top + r), (x - r, top)], fill=YELLOW, outline=BLACK)
    else:
        draw.rectangle((x - r * 1.5, top - r, x + r * 1.5, top + r), fill=(40, 90, 170), outline=WHITE)


def _add_noise(image: Image.Image, noise: np.random.Generator) -> Image.Image:
    """A little sensor noise, so the JPEGs are not flat synthetic colour fields."""
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + noise.integers(-6, 7, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def describe(sample: SampleSet) -> str:
    """One line for the CLI and the demo."""
    return (
        f"{len(sample.image_files)} images ({len(sample.corrupt_images)} corrupt, "
        f"{len(sample.uninformative_images)} uninformative, {len(sample.invalid_coordinate_rows)} with invalid "
        f"coordinates) in {len(sample.countries)} countries / {len(sample.cities)} cities, {sample.clue_lines} clue "
        f"lines ({len(sample.malformed_clue_lines)} malformed) under {sample.root}"
    )


