"""Image ingest: sha256 dedup, metadata validation with quarantine, unreadable files quarantined, re-runs add nothing."""

from sqlalchemy import func, select
from typer.testing import CliRunner

from curation.ingest import discover_images, ingest_images, read_metadata
from db.engine import session_scope
from db.models import Image, Quarantine
from geocurate.cli import app
from tests.scoring_images import write_images

METADATA = """filename,lat,lon,country_code,city,source
street_000.png,50.06,19.94,PL,Kraków,mapillary
street_001.png,48.85,2.35,fr,Paris,
street_002.png,95.0,2.35,FR,Paris,
street_003.png,10.0,10.0,XX,Nowhere,
street_004.png,52.5,,DE,Berlin,
"""


def make_folder(tmp_path):
    folder = tmp_path / "images"
    paths = write_images(folder, 6)
    (folder / "nested").mkdir()
    (folder / "nested" / "copy_of_0.png").write_bytes(paths[0].read_bytes())  # same content, other name
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "meta.csv").write_text(METADATA)
    return folder


def test_discover_images_is_recursive_sorted_and_filters_by_suffix(tmp_path):
    folder = make_folder(tmp_path)
    names = [p.relative_to(folder).as_posix() for p in discover_images(folder)]
    assert names == sorted(names) and "notes.txt" not in names
    assert "nested/copy_of_0.png" in names and "broken.jpg" in names and len(names) == 8


def test_read_metadata_quarantines_bad_rows(sqlite_store, tmp_path):
    make_folder(tmp_path)
    with session_scope() as session:
        rows = read_metadata(tmp_path / "meta.csv", session)
        reasons = sorted(session.scalars(select(Quarantine.reason)))
    assert rows["street_000.png"] == dict(lat=50.06, lon=19.94, country_code="PL", city="Kraków", source="mapillary")
    assert rows["street_001.png"]["country_code"] == "FR" and rows["street_001.png"]["source"] is None
    assert "outside [-90, 90]" in rows["street_002.png"]["rejected"]
    assert "unknown country code 'XX'" in rows["street_003.png"]["rejected"]
    assert "lat and lon must be given together" in rows["street_004.png"]["rejected"]
    assert len(reasons) == 3 and all(r.startswith("invalid metadata") for r in reasons)


def test_ingest_is_bulk_idempotent_and_quarantines_bad_input(store_url, tmp_path):
    folder = make_folder(tmp_path)
    paths = discover_images(folder)
    with session_scope() as session:
        summary = ingest_images(session, paths, read_metadata(tmp_path / "meta.csv", session), source="test")
    # 8 files: broken.jpg + 3 rejected metadata rows quarantined; copy_of_0 is a duplicate of street_000
    assert (summary.added, summary.duplicates, summary.quarantined) == (3, 1, 4)
    with session_scope() as session:
        again = ingest_images(session, paths, read_metadata(tmp_path / "meta.csv", session), source="test")
        stored = {row.uri.rsplit("/", 1)[1]: row for row in session.scalars(select(Image))}
        quarantined = session.scalar(select(func.count()).select_from(Quarantine))
    assert (again.added, again.duplicates, again.quarantined) == (0, 4, 4)
    assert quarantined == 7  # 3 metadata rows + 3 images for them + broken.jpg, recorded once
    krakow = stored.get("street_000.png") or stored["copy_of_0.png"]
    assert (krakow.lat, krakow.country_code, krakow.city, krakow.source) == (50.06, "PL", "Kraków", "mapillary")
    assert (stored["street_005.png"].width, stored["street_005.png"].height) == (64, 48)
    assert stored["street_005.png"].lat is None and stored["street_005.png"].source == "test"


def test_ingest_images_command_prints_a_summary(sqlite_store, tmp_path):
    folder = make_folder(tmp_path)
    result = CliRunner().invoke(app, ["ingest", "images", str(folder), "--metadata", str(tmp_path / "meta.csv")])
    assert result.exit_code == 0, result.output
    assert "8 files: added 3, duplicates 1, quarantined 4" in result.output
    missing = CliRunner().invoke(app, ["ingest", "images", str(tmp_path / "absent")])
    assert missing.exit_code != 0
