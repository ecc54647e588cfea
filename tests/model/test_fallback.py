"""The popularity fallback: the request's market when known, global otherwise, history excluded."""

from model.fallback import PopularityFallback

POPULARITY = {
    "segment_field": "country",
    "global": {"items": ["g1", "g2", "g3", "g4"], "scores": [0.4, 0.3, 0.2, 0.1]},
    "segments": {"DE": {"items": ["d1", "g2"], "scores": [0.6, 0.4]}},
}


def test_known_market_gets_its_own_ranking_topped_up_from_global():
    answer = PopularityFallback(POPULARITY).recommend({"country": "DE"}, [], 4)
    assert answer.items == ["d1", "g2", "g1", "g3"]
    assert answer.scores[:2] == [0.6, 0.4]


def test_unknown_or_missing_market_gets_the_global_ranking():
    fallback = PopularityFallback(POPULARITY)
    assert fallback.recommend({"country": "MX"}, [], 2).items == ["g1", "g2"]
    assert fallback.recommend({}, [], 2).items == ["g1", "g2"]
    assert fallback.recommend({"country": ["DE"]}, [], 2).items == ["g1", "g2"]


def test_history_items_are_never_recommended():
    answer = PopularityFallback(POPULARITY).recommend({"country": "DE"}, ["d1", "g1"], 10)
    assert answer.items == ["g2", "g3", "g4"]
