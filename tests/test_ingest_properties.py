"""Property-based: whatever a metadata CSV or a clue file holds (random Unicode, control characters, long strings,
numbers out of range, wrong JSON types, escaped lone surrogates), ingest never raises, and every line ends either
stored or quarantined, with the counts adding up. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from curation.clues.ingest import ingest_clues
from curation.ingest import ingest_folder
from db.engine import session_scope
from db.models import Quarantine
from tests.clue_fixtures import gazetteer, gazetteer_dir  # noqa: F401 - fixtures
from tests.scoring_images import write_images

FILES = ["street_000.png", "street_001.png", "sub/street_002.png", "sub/x.png", "x.png"]
EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
counter = itertools.count()

any_text = st.text(max_size=300)  # every code point but surrogates: NUL, controls, newlines, RTL, emoji ...
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str), any_text)
filenames = st.one_of(st.sampled_from(FILES + ["ghost.png", "./street_000.png", "../x.png", "sub\\x.png", ""]),
                      any_text)
countries = st.one_of(st.sampled_from(["PL", "pl", "FR", "XX", "", "POL", "Poland"]), any_text)
metadata_rows = st.lists(st.tuples(filenames, numbers, numbers, countries, any_text, any_text), max_size=12)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 2)
    write_images(folder / "sub", 1, start=2)
    write_images(folder / "sub", 1, start=3)
    (folder / "sub" / "street_003.png").rename(folder / "sub" / "x.png")
    write_images(folder, 1, start=4)
    (folder / "street_004.png").rename(folder / "x.png")
    return folder


def quarantined_from(session, source: str) -> int:
    return session.scalar(select(func.count()).select_from(Quarantine).where(Quarantine.reference.like(f"{source}:%")))


@EXAMPLES
@given(rows=metadata_rows)
def test_any_metadata_csv_ends_stored_or_quarantined(store_url, folder, tmp_path, rows):
    path = tmp_path / f"meta-{next(counter)}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "lat", "lon", "country_code", "city", "source"])
        writer.writerows(rows)
    with session_scope(store_url) as session:
        summary, match = ingest_folder(session, folder, path)
    assert summary.added + summary.duplicates + summary.quarantined == len(FILES)
    data_rows = [row for row in rows if any(str(cell).strip() for cell in row)]
    applied = match.counts()["rows_matched"]
    assert applied + len(match.problems) == len(data_rows)
    with session_scope(store_url) as session:
        assert quarantined_from(session, str(path)) == len({p.line for p in match.problems})


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text,
              st.text(alphabet=st.characters(categories=["Cs", "Cc", "Lu"]), max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children,
                                                                                max_size=3)),
    max_leaves=8,
)
clue_records = st.fixed_dictionaries({}, optional={
    "text": st.one_of(st.sampled_from(["Polish bollards are red and white.", "Signs in Brazil are blue", ""]),
                      json_values),
    "source": json_values, "country": st.one_of(countries, json_values), "image": json_values,
})
clue_lines = st.lists(st.one_of(
    clue_records.map(lambda record: json.dumps(record, ensure_ascii=True)),  # lone surrogates become \ud800 escapes
    any_text.filter(lambda line: "\n" not in line and "\r" not in line),  # not JSON at all, mostly
    json_values.map(json.dumps),  # JSON, but not an object
), max_size=12)


@EXAMPLES
@given(lines=clue_lines)
def test_any_clue_file_ends_stored_or_quarantined(store_url, tmp_path, gazetteer, lines):
    path = tmp_path / f"clues-{next(counter)}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    with session_scope(store_url) as session:
        summary = ingest_clues(session, path, gazetteer=gazetteer)
    physical = path.read_bytes().split(b"\n")
    non_blank = sum(1 for line in physical if line.strip())
    assert summary.added + summary.duplicates + summary.quarantined == non_blank
    with session_scope(store_url) as session:
        assert quarantined_from(session, str(path)) == summary.quarantined
