"""Bad input, one item at a time among good ones, on SQLite and PostgreSQL: the bad item is quarantined with the
expected reason (and where it came from), every good item of the same batch is stored, and the command's exit
status is what a user expects. Run through the CLI, as curators do."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from curation.files import local_path
from db.engine import session_scope
from db.models import Clue, Image, Quarantine
from geocurate.cli import app
from geocurate.settings import get_settings, reload_settings
from tests.clue_fixtures import gazetteer, gazetteer_dir  # noqa: F401 - fixtures
from tests.scoring_images import street_image, write_images

GOOD = 3  # good images next to each bad one
HEADER = "filename,lat,lon,country_code,city,source\n"
GOOD_ROWS = "".join(f"street_{i:03d}.png,50.0{i},19.9{i},PL,Kraków,test\n" for i in range(GOOD))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def cli_store() -> str:
    """The store the CLI commands under test write to (the fixture's, through GEOCURATE_DATABASE_URL)."""
    return get_settings().database_url


def stored(kind: type = Image) -> int:
    with session_scope(cli_store()) as session:
        return session.scalar(select(func.count()).select_from(kind))


def quarantined() -> dict[str, tuple[str, str, str]]:
    """reference -> (reason, source, detail)"""
    with session_scope(cli_store()) as session:
        return {q.reference: (q.reason, q.source or "", q.detail or "") for q in session.scalars(select(Quarantine))}


def reasons() -> list[str]:
    return sorted(reason for reason, _, _ in quarantined().values())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, GOOD)
    return folder


# --- image files -------------------------------------------------------------------------------------------------

@dataclass
class FileCase:
    name: str
    make: object  # (folder, tmp_path) -> None: adds the bad item
    reason: str | None  # expected quarantine reason; None: the item is stored
    env: tuple[tuple[str, str], ...] = ()


def _corrupt(folder: Path, tmp: Path) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")


def _tiny(folder: Path, tmp: Path) -> None:
    street_image(1, (20, 12)).save(folder / "tiny.png")


def _huge(folder: Path, tmp: Path) -> None:
    street_image(2, (400, 300)).save(folder / "huge.png")  # 120,000 px against a limit of 50,000


def _outside(folder: Path, tmp: Path) -> None:
    street_image(3).save(tmp / "elsewhere.png")
    os.symlink(tmp / "elsewhere.png", folder / "link.png")


def _fifo(folder: Path, tmp: Path) -> None:
    os.mkfifo(folder / "pipe.png")


def _device(folder: Path, tmp: Path) -> None:
    os.symlink("/dev/zero", folder / "zero.jpg")


def _undecodable_name(folder: Path, tmp: Path) -> None:
    street_image(4).save(os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9-\xff.png"))


def _undecodable_corrupt(folder: Path, tmp: Path) -> None:
    Path(os.fsdecode(os.fsencode(str(folder)) + b"/bad\xffname.jpg")).write_bytes(b"junk")


FILE_CASES = [
    FileCase("corrupt image", _corrupt, "unreadable_image"),
    FileCase("image below the minimum side", _tiny, "too_small"),
    FileCase("image above the pixel limit", _huge, "too_large", (("GEOCURATE_MAX_IMAGE_PIXELS", "50000"),)),
    FileCase("symlink leaving the folder", _outside, "outside_root"),
    FileCase("symlink leaving the folder, allowed", _outside, None, (("GEOCURATE_ALLOW_OUTSIDE_ROOT", "true"),)),
    FileCase("FIFO named like an image", _fifo, "not_regular_file"),
    FileCase("device reached through a symlink", _device, "outside_root"),
    FileCase("device, outside links allowed", _device, "not_regular_file", (("GEOCURATE_ALLOW_OUTSIDE_ROOT", "1"),)),
    FileCase("file name that is not UTF-8", _undecodable_name, None),
    FileCase("corrupt file whose name is not UTF-8", _undecodable_corrupt, "unreadable_image"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_a_bad_file_is_quarantined_and_the_rest_stored(case, store_url, folder, tmp_path, monkeypatch):
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    reload_settings()
    case.make(folder, tmp_path)
    result = invoke("ingest", "images", str(folder))
    assert result.exit_code == 0, result.output
    if case.reason is None:
        assert stored() == GOOD + 1 and reasons() == []
        with session_scope(store_url) as session:
            for uri in session.scalars(select(Image.uri)):
                assert os.path.isfile(local_path(uri)), uri  # every stored path opens, whatever its bytes
        return
    assert stored() == GOOD
    assert reasons() == [case.reason]
    (reference, (_, source, detail)), = quarantined().items()
    assert source == str(folder) and detail
    assert f"quarantined 1 ({case.reason} 1)" in result.output
    again = invoke("ingest", "images", str(folder))  # re-running adds nothing and records nothing twice
    assert again.exit_code == 0 and stored() == GOOD and len(quarantined()) == 1


def test_an_undecodable_name_is_stored_losslessly(store_url, folder, tmp_path):
    _undecodable_name(folder, tmp_path)
    assert invoke("ingest", "images", str(folder)).exit_code == 0
    with session_scope(store_url) as session:
        uri = session.scalar(select(Image.uri).where(Image.uri.like("file://%")))
    assert uri.endswith("/caf%E9-%FF.png")
    assert os.fsencode(local_path(uri)) == os.fsencode(str(folder)) + b"/caf\xe9-\xff.png"


# --- metadata rows -----------------------------------------------------------------------------------------------

@dataclass
class RowCase:
    name: str
    rows: str  # extra CSV rows after the good ones
    row_reasons: list[str]  # quarantined metadata rows
    image_reasons: list[str]  # quarantined images
    layout: object = None  # (folder) -> None: extra files


def _same_basename(folder: Path) -> None:
    for sub in ("a", "b"):
        write_images(folder / sub, 1, start=10 + ord(sub))
        (folder / sub / f"street_{10 + ord(sub):03d}.png").rename(folder / sub / "x.png")


ROW_CASES = [
    RowCase("latitude out of range", "extra.png,95,19.9,PL,Kraków,test\n", ["invalid_metadata"], ["metadata_rejected"]),
    RowCase("unknown country code", "extra.png,50,19,XX,Nowhere,test\n", ["unknown_country"], ["metadata_rejected"]),
    RowCase("city with a NUL", "extra.png,50,19,PL,Kra\x00ków,test\n", ["invalid_characters"], ["metadata_rejected"]),
    RowCase("city of 201 characters", f"extra.png,50,19,PL,{'k' * 201},test\n", ["field_too_long"],
            ["metadata_rejected"]),
    RowCase("source of 201 characters", f"extra.png,50,19,PL,Kraków,{'s' * 201}\n", ["field_too_long"],
            ["metadata_rejected"]),
    RowCase("row for a missing file", "ghost.png,50,19,PL,Kraków,test\n", ["missing_file"], []),
    RowCase("bare name shared by two images", "x.png,50,19,PL,Kraków,test\n", ["ambiguous_filename"], [],
            _same_basename),
    RowCase("second identical row", "street_001.png,50.01,19.91,PL,Kraków,test\n", ["duplicate_row"], []),
    RowCase("second row with other values", "street_001.png,10,10,DE,Berlin,test\n", ["duplicate_row"],
            ["metadata_rejected"]),
    RowCase("row naming a path outside the folder", "../elsewhere.png,50,19,PL,Kraków,test\n", ["missing_file"], []),
]


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.name for c in ROW_CASES])
def test_a_bad_metadata_row_is_quarantined_and_the_rest_applied(case, store_url, folder, tmp_path):
    street_image(7).save(folder / "extra.png")
    if case.layout:
        case.layout(folder)
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text(HEADER + GOOD_ROWS + case.rows, encoding="utf-8")
    result = invoke("ingest", "images", str(folder), "--metadata", str(csv_path))
    assert result.exit_code == 0, result.output
    found = quarantined()
    row_reasons = sorted(r for ref, (r, _, _) in found.items() if ref.startswith(f"{csv_path}:"))
    image_reasons = sorted(r for ref, (r, _, _) in found.items() if not ref.startswith(f"{csv_path}:"))
    assert row_reasons == sorted(case.row_reasons)
    assert image_reasons == sorted(case.image_reasons)
    with session_scope(store_url) as session:
        located = dict(session.execute(select(Image.uri, Image.country_code)).tuples().all())
    files = sum(1 for _ in folder.rglob("*.png"))
    assert len(located) == files - len(case.image_reasons)  # every other image is stored
    for name in ("street_000.png", "street_002.png"):  # good rows of the same file still applied
        assert located[str(folder / name)] == "PL"
    for reason in case.row_reasons:
        assert f"{reason} 1" in result.output


def test_relative_paths_and_absolute_paths_inside_the_folder_match(store_url, folder, tmp_path):
    write_images(folder / "paris", 1, start=20)
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text(HEADER + "paris/street_020.png,48.8,2.3,FR,Paris,\n"
                        f"{folder / 'street_000.png'},50,19,PL,Kraków,\n./street_001.png,50,19,PL,Kraków,\n")
    assert invoke("ingest", "images", str(folder), "--metadata", str(csv_path)).exit_code == 0
    with session_scope(store_url) as session:
        codes = dict(session.execute(select(Image.uri, Image.country_code)).tuples().all())
    assert codes[str(folder / "paris" / "street_020.png")] == "FR"
    assert codes[str(folder / "street_000.png")] == codes[str(folder / "street_001.png")] == "PL"
    assert quarantined() == {}


def test_a_latin1_csv_fails_with_its_line_or_reads_with_encoding(store_url, folder, tmp_path):
    csv_path = tmp_path / "meta.csv"
    csv_path.write_bytes((HEADER + GOOD_ROWS).encode("latin-1"))
    result = CliRunner().invoke(app, ["ingest", "images", str(folder), "--metadata", str(csv_path)])
    assert result.exit_code != 0
    assert stored() == 0  # nothing half-read
    right = invoke("ingest", "images", str(folder), "--metadata", str(csv_path), "--encoding", "latin-1")
    assert right.exit_code == 0, right.output
    with session_scope(store_url) as session:
        assert set(session.scalars(select(Image.city))) == {"Kraków"}


def test_the_latin1_error_names_the_file_and_line(tmp_path):
    from curation.metadata import MetadataFileError, read_metadata

    csv_path = tmp_path / "meta.csv"
    csv_path.write_bytes((HEADER + GOOD_ROWS).encode("latin-1"))
    with pytest.raises(MetadataFileError, match=rf"{csv_path}:2: not valid utf-8-sig \(byte 0xf3"):
        read_metadata(csv_path)


def test_a_write_the_database_refuses_costs_only_its_row(store_url, folder, tmp_path):
    """A refusal validation did not foresee (here a trigger): the batch is written row by row, only the offender
    is quarantined as write_failed."""
    with session_scope(store_url) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.city = 'Boom' THEN "
                                 "RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            session.execute(text("CREATE TRIGGER boom BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION boom()"))
        else:
            session.execute(text("CREATE TRIGGER boom BEFORE INSERT ON images WHEN NEW.city = 'Boom' "
                                 "BEGIN SELECT RAISE(ABORT, 'boom'); END"))
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text(HEADER + GOOD_ROWS.replace("Kraków,test\n", "Boom,test\n", 1))
    result = invoke("ingest", "images", str(folder), "--metadata", str(csv_path))
    assert result.exit_code == 0, result.output
    assert stored() == GOOD - 1
    (reason, source, detail), = quarantined().values()
    assert reason == "write_failed" and "boom" in detail and source == f"{csv_path}:2"


# --- clue lines --------------------------------------------------------------------------------------------------

CLUE_CASES = [
    ("escaped lone surrogate", '{"text": "x \\ud800 Brazil"}', "bad_encoding"),
    ("NUL in the text", '{"text": "Polish bollards \\u0000 are red"}', "invalid_characters"),
    ("source of 201 characters", json.dumps({"text": "Czech signs", "source": "s" * 201}), "field_too_long"),
    ("image that is a device", '{"text": "Dutch bike lanes", "image": "/dev/zero"}', "bad_image_ref"),
    ("image that is a directory", '{"text": "Dutch bike lanes", "image": "/tmp"}', "bad_image_ref"),
    ("image given as a list", '{"text": "Dutch bike lanes", "image": ["a.jpg"]}', "invalid_value"),
    ("invalid JSON", '{"text": "Swiss', "bad_json"),
    ("a JSON array, not an object", '["Swiss roads"]', "bad_json"),
    ("nesting too deep", '{"text": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}", "bad_json"),
    ("unknown country", '{"text": "Roads in Atlantis", "country": "Atlantis"}', "unknown_country"),
    ("no text", '{"source": "guide"}', "missing_text"),
]


@pytest.mark.parametrize("name,line,reason", CLUE_CASES, ids=[c[0] for c in CLUE_CASES])
def test_a_bad_clue_line_is_quarantined_and_the_file_loads(name, line, reason, store_url, tmp_path, gazetteer):
    path = tmp_path / "clues.jsonl"
    good = ['{"text": "Polish bollards are red and white.", "country": "PL"}',
            '{"text": "Brazil uses a yellow centre line."}']
    path.write_text("\n".join([good[0], line, good[1]]) + "\n", encoding="utf-8")
    result = invoke("ingest", "clues", str(path))
    assert result.exit_code == 0, result.output
    assert stored(Clue) == 2
    assert quarantined() == {f"{path}:2": (reason, str(path), quarantined()[f"{path}:2"][2])}


def test_clue_csv_in_latin1_reads_with_encoding(store_url, tmp_path, gazetteer):
    path = tmp_path / "clues.csv"
    path.write_bytes("text,country\nIn Kraków the trams are blue.,PL\n".encode("latin-1"))
    wrong = invoke("ingest", "clues", str(path))
    assert wrong.exit_code == 0 and reasons() == ["bad_encoding"] and stored(Clue) == 0
    right = invoke("ingest", "clues", str(path), "--encoding", "latin-1")
    assert right.exit_code == 0, right.output
    with session_scope(store_url) as session:
        assert session.scalar(select(Clue.text)) == "In Kraków the trams are blue."
