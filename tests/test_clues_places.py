"""Place recognition and the accept / reject / review decision, on the offline gazetteer."""

from pathlib import Path

import pytest

from curation.clues import assess_clue, assess_clues, extract_places
from curation.clues.evaluation import AMBIGUOUS, NONE, load_corpus, score
from tests.clue_fixtures import gazetteer, gazetteer_dir  # noqa: F401 - fixtures

CORPUS = Path(__file__).parent / "data" / "clues_corpus.jsonl"


def only(places, kind=None):
    assert len(places) == 1, places
    if kind:
        assert places[0].kind == kind
    return places[0]


def test_a_city_has_its_span_country_and_coordinates(gazetteer):
    text = "The trams in Kraków are blue."
    place = only(extract_places(text, gazetteer), "city")
    assert text[place.start : place.end] == "Kraków"
    assert place.codes == ("PL",) and place.country == "PL"
    assert place.lat == pytest.approx(50.06, abs=0.1) and place.lon == pytest.approx(19.94, abs=0.1)
    assert only(extract_places("The trams in Krakow are blue.", gazetteer)).country == "PL"  # without the accent


def test_demonyms_countries_regions_and_continents(gazetteer):
    assert only(extract_places("Polish bollards are red and white.", gazetteer), "demonym").country == "PL"
    assert only(extract_places("Kenyan coverage has a snorkel.", gazetteer), "demonym").country == "KE"
    assert only(extract_places("Roads in the Czech Republic are narrow.", gazetteer), "country").country == "CZ"
    assert only(extract_places("New South Wales has yellow signs.", gazetteer), "region").country == "AU"
    europe = only(extract_places("In Europe cars drive on the right.", gazetteer), "continent")
    assert europe.codes == () and europe.continent == "EU"


def test_ambiguous_names_keep_all_their_candidates(gazetteer):
    georgia = only(extract_places("In Georgia the alphabet is curly.", gazetteer))
    assert set(georgia.codes) == {"GE", "US"} and georgia.country is None and georgia.ambiguous
    victoria = only(extract_places("Victoria has eucalyptus trees.", gazetteer))
    assert {"AU", "CA"} <= set(victoria.codes) and len(victoria.codes) >= 3 and victoria.country is None
    # a city far more populous than any namesake resolves on its own
    assert only(extract_places("Paris has zinc roofs.", gazetteer)).country == "FR"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Nice has palm trees along the promenade.", ["FR"]),
        ("The weather looks nice today.", []),
        ("The ferry from Split goes to the islands.", ["HR"]),
        ("A split in the road has an island.", []),
        ("Split the map into hemispheres first.", []),  # sentence-initial ordinary word
        ("The port of Mobile is on the Gulf coast.", ["US"]),
        ("Mobile coverage shows many cars.", []),
        ("Reading the signs is the fastest way.", []),
        ("You can polish your skills.", []),
        ("Plates in the US are white; let us see.", ["US"]),
        ("The Andes are high.", []),  # "the" + name: no city of Colombia
    ],
)
def test_ordinary_words_count_only_as_proper_nouns(gazetteer, text, expected):
    assert [p.country for p in extract_places(text, gazetteer)] == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Brazil uses Portuguese on all road signs.", ["BR"]),
        ("Signs in Canada are in English and French.", ["CA"]),
        ("Mozambique is a Portuguese-speaking country.", ["MZ"]),
        ("Estonian and Latvian bollards look alike.", ["EE", "LV"]),
    ],
)
def test_languages_are_not_places(gazetteer, text, expected):
    assert [p.country for p in extract_places(text, gazetteer)] == expected


def test_decisions(gazetteer):
    accepted = assess_clue("Polish bollards are red and white.", gazetteer=gazetteer)
    assert (accepted.decision, accepted.country, accepted.geo_ok) == ("accepted", "PL", True)
    assert "Poland" in accepted.reason

    rejected = assess_clue("Look at the sun to find the hemisphere.", gazetteer=gazetteer)
    assert (rejected.decision, rejected.country, rejected.geo_ok) == ("rejected", None, False)
    assert rejected.reason

    ambiguous = assess_clue("In Georgia the alphabet is curly.", gazetteer=gazetteer)
    assert (ambiguous.decision, ambiguous.country, ambiguous.geo_ok) == ("review", None, True)

    several = assess_clue("Both Poland and Czechia use red and white bollards.", gazetteer=gazetteer)
    assert (several.decision, several.country) == ("review", None)
    assert "Poland" in several.reason and "Czechia" in several.reason

    settled = assess_clue("Tbilisi is the capital of Georgia.", gazetteer=gazetteer)
    assert (settled.decision, settled.country) == ("accepted", "GE")

    continent = assess_clue("In Europe most countries drive on the right.", gazetteer=gazetteer)
    assert (continent.decision, continent.geo_ok) == ("review", False)


def test_the_country_given_with_a_clue(gazetteer):
    consistent = assess_clue("In Georgia the signs are green.", "US", gazetteer=gazetteer)
    assert (consistent.decision, consistent.country) == ("accepted", "US")
    by_name = assess_clue("Unlike Spain, Portugal has black curbs.", "Portugal", gazetteer=gazetteer)
    assert (by_name.decision, by_name.country) == ("accepted", "PT")
    conflict = assess_clue("Polish bollards are red and white.", "DE", gazetteer=gazetteer)
    assert (conflict.decision, conflict.country) == ("review", "PL")
    assert "Germany" in conflict.reason


def test_batched_assessment_matches_one_by_one(gazetteer):
    rows = load_corpus(CORPUS)[:30]
    texts = [r["text"] for r in rows]
    hints = [None, "PL"] * 15
    batched = assess_clues(texts, hints, gazetteer=gazetteer)
    single = [assess_clue(t, h, gazetteer=gazetteer) for t, h in zip(texts, hints)]
    assert [(a.decision, a.country, a.reason) for a in batched] == [(a.decision, a.country, a.reason) for a in single]
    with pytest.raises(ValueError):
        assess_clues(texts, hints[:3], gazetteer=gazetteer)


def test_corpus_agreement_is_at_least_95_percent(gazetteer):
    rows = load_corpus(CORPUS)
    assert len(rows) >= 60
    expected = {r["expect"] for r in rows}
    assert NONE in expected and AMBIGUOUS in expected
    categories = {r["category"] for r in rows}
    assert {"demonym", "city", "ambiguous", "lowercase common word", "multi-country"} <= categories
    scores = score(rows, assess_clues([r["text"] for r in rows], None, gazetteer=gazetteer))
    assert scores.agreement >= 0.95, "\n".join(scores.disagreements)
    assert scores.geo_precision >= 0.95 and scores.geo_recall >= 0.95


def test_gazetteer_is_cached_on_disk(gazetteer, gazetteer_dir, monkeypatch):
    from curation.clues import gazetteer as module

    # the session's gazetteer may come from another test's data dir (it is process-wide): make sure this one is built
    module.load_gazetteer(gazetteer_dir)
    monkeypatch.setattr(module, "build_entries", lambda: pytest.fail("rebuilt instead of read from the cache"))
    again = module.load_gazetteer(gazetteer_dir)
    assert again.version == gazetteer.version
    assert [p.country for p in extract_places("Polish bollards", again)] == ["PL"]


def test_a_trained_spacy_model_is_merged_in(gazetteer, gazetteer_dir, tmp_path):
    import spacy

    from curation.clues.gazetteer import load_gazetteer

    model = spacy.blank("en")  # stands in for a trained pipeline: same loading path, its own GPE entities
    ruler = model.add_pipe("entity_ruler", name="ner")
    ruler.add_patterns([{"label": "GPE", "pattern": "Zubrowka"}, {"label": "GPE", "pattern": "kraków"},
                        {"label": "GPE", "pattern": "Polish"}])
    model.to_disk(tmp_path / "model")
    merged = load_gazetteer(gazetteer_dir, spacy_model=str(tmp_path / "model"))
    assert merged.nlp.pipe_names[0] == "gazetteer"

    places = extract_places("Polish trams in kraków, not Zubrowka.", merged)
    by_text = {p.text: p for p in places}
    assert by_text["Polish"].source == "gazetteer" and by_text["Polish"].kind == "demonym"  # gazetteer wins
    assert by_text["kraków"].source == "model" and by_text["kraków"].country == "PL"  # resolved by the look-ups
    assert by_text["Zubrowka"].codes == () and by_text["Zubrowka"].source == "model"
    assert assess_clue("Trams in Zubrowka.", gazetteer=merged).decision == "review"  # a place, but no country


def test_an_uninstalled_spacy_model_is_a_clear_error(gazetteer_dir):
    from curation.clues.gazetteer import load_gazetteer
    from geocurate.errors import UserError

    with pytest.raises(UserError, match="GEOCURATE_SPACY_MODEL"):
        load_gazetteer(gazetteer_dir, spacy_model="en_core_web_nonexistent")
