"""Model answers become Predictions: valid JSON as is, broken JSON repaired where possible, the rest recorded as
unparsed with its raw text, never an exception."""

import pytest

from training.answers import parse_answer


def test_valid_json_answer_is_parsed_with_its_country_code():
    p = parse_answer('{"country": "Poland", "city": "Krakow", "reasons": "yellow centre lines"}')
    assert (p.parsed, p.repaired, p.country, p.country_code, p.city, p.reasons) == (
        True, False, "Poland", "PL", "Krakow", "yellow centre lines")


@pytest.mark.parametrize(
    "text, code, city",
    [
        ("```json\n{'country': 'Germany', 'city': None,}\n```", "DE", None),  # fence, single quotes, comma
        ('{"country": "France", "city": "Paris", "reasons": "blue plates', "FR", "Paris"),  # cut off
        ('I would say "country": "Japan", "city": "Tokyo" because of the script', "JP", "Tokyo"),  # no object
    ],
)
def test_broken_json_is_repaired(text, code, city):
    p = parse_answer(text)
    assert p.parsed and p.repaired
    assert p.country_code == code and p.city == city


def test_chatter_around_the_object_is_ignored():
    p = parse_answer('Sure! {"country": "USA", "city": "Boston"} and then more text {')
    assert p.parsed and p.country_code == "US" and p.city == "Boston"


@pytest.mark.parametrize("text", ["", "no idea", "[1, 2]", '{"foo": 1}', "{{{"])
def test_unrepairable_answers_are_recorded_unparsed(text):
    p = parse_answer(text)
    assert not p.parsed
    assert p.raw == text and p.error


def test_unknown_country_is_parsed_without_a_code():
    p = parse_answer('{"country": "Atlantis", "city": null, "reasons": ""}')
    assert p.parsed and p.country == "Atlantis" and p.country_code is None and p.reasons is None
