"""Clue files into the store: every clue kept with its decision, bad lines quarantined with file:line, duplicates
skipped, given images linked as pairs. Runs on SQLite and PostgreSQL."""

import json

from sqlalchemy import func, select
from typer.testing import CliRunner

from curation.clues.ingest import clue_sha256, ingest_clues, link_given_images
from db.clues import set_clue_decision
from db.engine import session_scope
from db.images import add_images, ids_by_sha
from db.models import Clue, CluePair, Quarantine
from tests.clue_fixtures import gazetteer, gazetteer_dir  # noqa: F401 - fixtures

STORED_SHA = "a" * 64


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
                    encoding="utf-8")
    return path


def test_normalised_text_hash_ignores_case_spacing_and_end_punctuation():
    assert clue_sha256("Polish  bollards are red.") == clue_sha256("polish bollards are RED")
    assert clue_sha256("Polish bollards") != clue_sha256("Czech bollards")


def test_jsonl_ingest_counts_quarantines_and_links(store_url, tmp_path, gazetteer):
    image_file = tmp_path / "street.jpg"
    image_file.write_bytes(b"not really a jpeg, only hashed")
    from curation.clip import file_digest

    with session_scope(store_url) as s:
        add_images(s, [dict(sha256=STORED_SHA, uri="/x/a.jpg", country_code="PL"),
                       dict(sha256=file_digest(image_file), uri=str(image_file), country_code="BR")])
    clues = write_jsonl(tmp_path / "clues.jsonl", [
        {"text": "Polish bollards are red and white.", "source": "guide", "image": STORED_SHA},
        {"text": "Brazil uses a yellow centre line.", "image_path": "street.jpg"},
        {"text": "Look at the sun to find the hemisphere."},
        {"text": "In Georgia the alphabet is curly."},
        {"text": "Kenyan cars have a snorkel.", "country": "Germany"},
        {"text": "  polish BOLLARDS are red and white  "},  # duplicate after normalisation
        "{not json",
        {"source": "guide"},
        {"text": "Japan has tall poles.", "country": "Atlantis"},
        "[1, 2]",
        {"text": "Thai signs use a distinctive script.", "image": "b" * 64},  # image not in the store (yet)
    ])
    with session_scope(store_url) as s:
        summary = ingest_clues(s, clues, gazetteer=gazetteer)
    assert (summary.accepted, summary.rejected, summary.review) == (3, 1, 2)
    assert (summary.duplicates, summary.quarantined, summary.images_linked) == (1, 4, 2)
    assert any(r.startswith(f"{clues}:7: invalid JSON") for r in summary.quarantine_reasons)

    with session_scope(store_url) as s:
        rows = {c.text: c for c in s.scalars(select(Clue))}
        assert len(rows) == 6
        polish = rows["Polish bollards are red and white."]
        assert (polish.status, polish.country, polish.geo_ok, polish.source) == ("accepted", "PL", True, "guide")
        assert polish.entities[0]["text"] == "Polish" and polish.entities[0]["codes"] == ["PL"]
        assert rows["Look at the sun to find the hemisphere."].status == "rejected"
        assert rows["Look at the sun to find the hemisphere."].reason
        kenya = rows["Kenyan cars have a snorkel."]
        assert (kenya.status, kenya.country_hint, kenya.country) == ("review", "DE", "KE")
        assert rows["Brazil uses a yellow centre line."].source == "clues.jsonl"
        pairs = s.execute(select(CluePair.clue_id, CluePair.image_id, CluePair.method)).all()
        image_ids = ids_by_sha(s, [STORED_SHA])
        assert (polish.id, image_ids[STORED_SHA], "given") in pairs and len(pairs) == 2
        assert rows["Thai signs use a distinctive script."].image_id is None
        quarantined = {q.reference: (q.reason, q.detail, q.source) for q in s.scalars(select(Quarantine))}
        assert quarantined[f"{clues}:7"][0] == "bad_json" and quarantined[f"{clues}:7"][1].startswith("invalid JSON")
        assert quarantined[f"{clues}:8"][0] == "missing_text" and "missing or empty 'text'" in quarantined[f"{clues}:8"][1]
        assert quarantined[f"{clues}:9"][0] == "unknown_country"
        assert quarantined[f"{clues}:9"][1].startswith("unknown country 'Atlantis'")
        assert f"{clues}:10" in quarantined and quarantined[f"{clues}:10"][2] == str(clues)

    with session_scope(store_url) as s:  # the same file again: nothing new, nothing lost
        again = ingest_clues(s, clues, gazetteer=gazetteer)
    assert (again.added, again.duplicates, again.quarantined) == (0, 7, 4)
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(Clue)) == 6
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 4

    with session_scope(store_url) as s:  # the Thai clue's image arrives later and is linked then
        add_images(s, [dict(sha256="b" * 64, uri="/x/b.jpg", country_code="TH")])
    with session_scope(store_url) as s:
        assert link_given_images(s) == 1
        assert link_given_images(s) == 0
        thai = s.scalar(select(Clue).where(Clue.text.startswith("Thai")))
        assert thai.image_id == ids_by_sha(s, ["b" * 64])["b" * 64]


def test_csv_ingest_and_a_human_decision(store_url, tmp_path, gazetteer):
    path = tmp_path / "clues.csv"
    path.write_text(
        "text,source,country\n"
        "\"Czech bollards have red caps, like Slovak ones.\",wiki,CZ\n"
        "Swiss roads have yellow hiking signs.,wiki,\n"
        ",wiki,PL\n"
        "gg wp,chat,\n",
        encoding="utf-8",
    )
    with session_scope(store_url) as s:
        summary = ingest_clues(s, path, gazetteer=gazetteer)
    assert (summary.accepted, summary.rejected, summary.review, summary.quarantined) == (2, 1, 0, 1)
    with session_scope(store_url) as s:
        czech = s.scalar(select(Clue).where(Clue.text.startswith("Czech")))
        assert (czech.status, czech.country, czech.country_hint) == ("accepted", "CZ", "CZ")
        assert s.scalar(select(Quarantine.reference)) == f"{path}:4"
        gg = s.scalar(select(Clue).where(Clue.text == "gg wp"))
        set_clue_decision(s, gg.id, "accepted", reason="annotator: Poland", country="PL")
    with session_scope(store_url) as s:
        assert s.get(Clue, gg.id).status == "accepted" and s.get(Clue, gg.id).country == "PL"


def test_cli_prints_counts_per_outcome(store_url, tmp_path, gazetteer):
    from geocurate.cli import app

    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "Polish bollards are red."}, {"text": "nothing here"}, "{"])
    result = CliRunner().invoke(app, ["ingest", "clues", str(path)])
    assert result.exit_code == 0, result.output
    assert "accepted: 1" in result.output and "rejected: 1" in result.output and "quarantined: 1" in result.output

    missing = CliRunner().invoke(app, ["ingest", "clues", str(tmp_path / "missing.jsonl")])
    assert missing.exit_code != 0 and "not found" in str(missing.exception)

    assessed = CliRunner().invoke(app, ["clues", "assess", "In Georgia the signs are curly."])
    assert assessed.exit_code == 0 and assessed.output.startswith("review:") and "GE/US" in assessed.output
