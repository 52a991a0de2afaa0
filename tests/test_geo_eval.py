"""The evaluation maths: great-circle distances against known city pairs, the GeoGuessr score, and the metrics on
hand-made predictions (placing, accuracy, distance shares, median, parse failures)."""

import math

import pytest

from geocurate.countries import city_point
from training.geo import WORST_DISTANCE_KM, geo_metrics, geoguessr_score, haversine_km, place


@pytest.mark.parametrize(
    "a, b, km",
    [
        ((51.5074, -0.1278), (48.8566, 2.3522), 343.6),  # London - Paris
        ((40.7128, -74.0060), (34.0522, -118.2437), 3935.7),  # New York - Los Angeles
        ((-33.8688, 151.2093), (35.6762, 139.6503), 7823.0),  # Sydney - Tokyo
        ((0.0, 0.0), (0.0, 90.0), math.pi / 2 * 6371.0088),  # a quarter of the equator
        ((50.0614, 19.9366), (50.0614, 19.9366), 0.0),
    ],
)
def test_haversine_matches_known_city_distances(a, b, km):
    assert haversine_km(*a, *b) == pytest.approx(km, rel=0.003, abs=0.01)
    assert haversine_km(*b, *a) == pytest.approx(haversine_km(*a, *b))


def test_antipodes_are_the_worst_distance():
    assert haversine_km(10.0, 20.0, -10.0, -160.0) == pytest.approx(WORST_DISTANCE_KM, rel=1e-6)


def test_geoguessr_score_is_5000_at_zero_and_decays_by_e_every_1492_7_km():
    assert geoguessr_score(0) == 5000
    assert geoguessr_score(1492.7) == pytest.approx(5000 / math.e)
    assert geoguessr_score(2 * 1492.7) == pytest.approx(5000 / math.e**2)


def test_a_predicted_city_is_placed_at_its_coordinates_and_a_country_at_its_capital():
    assert place("PL", "Krakow") == pytest.approx((50.06, 19.94), abs=0.01)
    assert place("DE", None) == pytest.approx((52.52, 13.41), abs=0.01)  # Berlin
    assert place("FR", "Atlantis") == pytest.approx(place("FR", None))  # unknown city: the country's point
    assert place(None, None) is None
    assert place("ZZ", None) is None


def row(truth_code, truth_city, lat, lon, pred_code, pred_city, parsed=True):
    return dict(truth_code=truth_code, truth_city=truth_city, truth_lat=lat, truth_lon=lon, pred_code=pred_code,
                pred_city=pred_city, parsed=parsed)


def test_metrics_on_hand_made_predictions():
    rows = [
        row("PL", "Krakow", 50.0614, 19.9366, "PL", "Kraków"),  # right city (accents ignored): ~0 km
        row("DE", "Munich", 48.1351, 11.5820, "DE", None),  # right country, placed at Berlin: ~504 km
        row("FR", "Paris", 48.8566, 2.3522, "GB", "London"),  # wrong country, London: ~344 km
        row("JP", "Tokyo", 35.6895, 139.6917, None, None, parsed=False),  # unparsed: worst distance
    ]
    metrics = geo_metrics(rows)
    munich_berlin = haversine_km(48.1351, 11.5820, *city_point("Berlin", "DE"))
    paris_london = haversine_km(48.8566, 2.3522, *city_point("London", "GB"))
    assert munich_berlin == pytest.approx(504, rel=0.01) and paris_london == pytest.approx(344, rel=0.01)

    assert metrics["n"] == 4
    assert metrics["country_accuracy"] == 0.5
    assert metrics["city_accuracy"] == 0.25
    assert metrics["within_km"] == {"1": 0.25, "25": 0.25, "200": 0.25, "750": 0.75, "2500": 0.75}
    assert metrics["median_km"] == pytest.approx((munich_berlin + paris_london) / 2, abs=0.01)
    expected_score = (5000 + geoguessr_score(munich_berlin) + geoguessr_score(paris_london) + 0) / 4
    assert metrics["mean_geoguessr"] == pytest.approx(expected_score, abs=0.2)
    assert metrics["parse_failure_rate"] == 0.25


def test_truth_without_coordinates_is_placed_from_its_city_and_without_anything_is_left_out():
    rows = [
        row("PL", "Krakow", None, None, "PL", "Krakow"),  # truth placed at Krakow: 0 km
        row(None, None, None, None, "PL", "Krakow"),  # no truth location: no distance, no accuracy
    ]
    metrics = geo_metrics(rows)
    assert metrics["n_with_distance"] == 1
    assert metrics["within_km"]["1"] == 1.0
    assert metrics["country_accuracy"] == 1.0 and metrics["city_accuracy"] == 1.0


def test_a_right_city_in_the_wrong_country_is_not_a_city_hit():
    metrics = geo_metrics([row("US", "Paris", 33.66, -95.55, "FR", "Paris")])  # Paris, Texas
    assert metrics["city_accuracy"] == 0.0
    assert metrics["median_km"] > 7000


def test_a_right_city_with_no_predicted_country_is_not_a_city_hit():
    # The old rule let a missing country through (pred_code None counted as "not wrong"): Krakow alone was a hit.
    metrics = geo_metrics([row("PL", "Krakow", 50.0614, 19.9366, None, "Krakow"),
                           row("PL", "Krakow", 50.0614, 19.9366, "PL", "Krakow")])
    assert metrics["city_accuracy"] == 0.5
    assert metrics["country_accuracy"] == 0.5


@pytest.mark.parametrize(
    "pred_code, pred_city, hit",
    [
        ("PL", "Krakow", True),
        ("PL", "KRAKÓW", True),  # the name is normalised, the country must still match
        (None, "Krakow", False),  # no country: the name alone places nothing
        ("DE", "Krakow", False),
        ("PL", None, False),
        ("PL", "Warsaw", False),
    ],
)
def test_city_hit_needs_the_right_city_in_the_right_country(pred_code, pred_city, hit):
    from training.geo import city_hit

    assert city_hit(row("PL", "Krakow", 50.06, 19.94, pred_code, pred_city)) is hit
    assert geo_metrics([row("PL", "Krakow", 50.06, 19.94, pred_code, pred_city)])["city_accuracy"] == float(hit)


def test_a_truth_without_a_country_is_judged_on_its_city_alone():
    from training.geo import city_hit

    assert city_hit(row(None, "Krakow", None, None, None, "Krakow")) is True
    assert city_hit(row(None, "Krakow", None, None, "PL", "Warsaw")) is False
