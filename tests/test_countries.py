"""Country and city look-ups work offline and map every spelling clues and metadata use to one ISO code."""

import pytest

from geocurate.countries import city_point, country_code, country_name, country_point, is_country_code


@pytest.mark.parametrize(
    "given, expected",
    [
        ("Poland", "PL"), ("PL", "PL"), ("pl", "PL"), ("POL", "PL"), ("Czechia", "CZ"), ("Czech Republic", "CZ"),
        ("Russian Federation", "RU"), ("Russia", "RU"), ("Korea, Republic of", "KR"), ("South Korea", "KR"),
        ("UK", "GB"), ("the Netherlands", "NL"), ("Côte d’Ivoire", "CI"), ("Ivory Coast", "CI"), ("Kosovo", "XK"),
        ("Türkiye", "TR"), ("United States of America", "US"),
    ],
)
def test_country_code_accepts_names_and_codes(given, expected):
    assert country_code(given) == expected


@pytest.mark.parametrize("given", ["Atlantis", "", "   ", None, "ZZ", "Europe"])
def test_country_code_is_none_for_unknown_input(given):
    assert country_code(given) is None


def test_country_name_is_the_english_common_name():
    assert [country_name(c) for c in ("PL", "RU", "KR", "tr", "CZ")] == [
        "Poland", "Russia", "South Korea", "Turkey", "Czechia"]


def test_country_point_is_the_capital_and_refuses_unknown_codes():
    lat, lon = country_point("PL")  # Warsaw
    assert abs(lat - 52.23) < 0.1 and abs(lon - 21.01) < 0.1
    lat, lon = country_point("BR")  # Brasília, not São Paulo
    assert abs(lat + 15.78) < 0.1 and abs(lon + 47.93) < 0.1
    for code in ("XK", "VA", "AQ", "BV"):  # a point for every country, even without a listed capital city
        lat, lon = country_point(code)
        assert -90 <= lat <= 90 and -180 <= lon <= 180
    with pytest.raises(KeyError):
        country_point("ZZ")


def test_city_point_prefers_the_most_populous_match_and_respects_the_country():
    assert city_point("Paris") == pytest.approx((48.853, 2.349), abs=0.01)
    lat, _ = city_point("Paris", "US")
    assert 30 < lat < 40  # Paris, Texas
    assert city_point("Kraków") == city_point("krakow")
    assert city_point("Nowhereville") is None


def test_is_country_code():
    assert is_country_code("PL") and is_country_code("pl")
    assert not is_country_code("ZZ") and not is_country_code("AN") and not is_country_code("POL")
