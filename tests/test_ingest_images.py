"""Image ingest: sha256 dedup, metadata validation and matching with quarantine, unreadable files quarantined,
re-runs add nothing."""

from sqlalchemy import func, select
from typer.testing import CliRunner

from curation.files import discover_images
from curation.ingest import ingest_folder
from curation.metadata import match_metadata, read_metadata
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
    names = [p.relative_to(folder).as_posix() for p in discover_images(folder).files]
    assert names == sorted(names) and "notes.txt" not in names
    assert "nested/copy_of_0.png" in names and "broken.jpg" in names and len(names) == 8


def test_read_metadata_refuses_bad_rows_with_their_reason(tmp_path):
    folder = make_folder(tmp_path)
    match = match_metadata(tmp_path / "meta.csv", read_metadata(tmp_path / "meta.csv"), discover_images(folder))
    assert match.rows["street_000.png"].values == dict(lat=50.06, lon=19.94, country_code="PL", city="Kraków",
                                                      source="mapillary")
    assert match.rows["street_001.png"].values["country_code"] == "FR"
    assert match.rows["street_001.png"].values["source"] is None
    problems = {p.line: (p.reason, p.message) for p in match.problems}
    assert problems[4][0] == "invalid_metadata" and "outside [-90, 90]" in problems[4][1]
    assert problems[5][0] == "unknown_country" and "'XX'" in problems[5][1]
    assert "lat and lon must be given together" in problems[6][1]
    assert set(match.refused) == {"street_002.png", "street_003.png", "street_004.png"}


def test_ingest_is_bulk_idempotent_and_quarantines_bad_input(store_url, tmp_path):
    folder = make_folder(tmp_path)
    with session_scope(store_url) as session:
        summary, _ = ingest_folder(session, folder, tmp_path / "meta.csv", source="test")
    # 8 files: broken.jpg + 3 rejected metadata rows quarantined; copy_of_0 is a duplicate of street_000
    assert (summary.added, summary.duplicates, summary.quarantined) == (3, 1, 4)
    assert summary.reasons == {"metadata_rejected": 3, "unreadable_image": 1}
    with session_scope(store_url) as session:
        again, _ = ingest_folder(session, folder, tmp_path / "meta.csv", source="test")
        stored = {row.uri.rsplit("/", 1)[1]: row for row in session.scalars(select(Image))}
        quarantined = session.scalar(select(func.count()).select_from(Quarantine))
        sources = set(session.scalars(select(Quarantine.source).where(Quarantine.reason == "metadata_rejected")))
    assert (again.added, again.duplicates, again.quarantined) == (0, 4, 4)
    assert quarantined == 7  # 3 metadata rows + 3 images for them + broken.jpg, recorded once
    assert sources == {f"{tmp_path / 'meta.csv'}:{line}" for line in (4, 5, 6)}
    krakow = stored.get("street_000.png") or stored["copy_of_0.png"]
    assert (krakow.lat, krakow.country_code, krakow.city, krakow.source) == (50.06, "PL", "Kraków", "mapillary")
    assert (stored["street_005.png"].width, stored["street_005.png"].height) == (64, 48)
    assert stored["street_005.png"].lat is None and stored["street_005.png"].source == "test"


def test_ingest_images_command_prints_a_summary(sqlite_store, tmp_path):
    folder = make_folder(tmp_path)
    result = CliRunner().invoke(app, ["ingest", "images", str(folder), "--metadata", str(tmp_path / "meta.csv")])
    assert result.exit_code == 0, result.output
    assert "images: added 3, duplicates 1, quarantined 4 (metadata_rejected 3, unreadable_image 1)" in result.output
    assert "metadata rows: matched 2, invalid_metadata 2, unknown_country 1" in result.output
    missing = CliRunner().invoke(app, ["ingest", "images", str(tmp_path / "absent")])
    assert missing.exit_code != 0
