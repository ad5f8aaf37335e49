from collections import Counter

import pytest

from extraction.extractors import UserInput, make_extractor
from extraction.models import Behavior, UserProfile
from extraction.sample_data import sample_user


def test_a_user_is_the_same_whatever_the_number_generated():
    assert sample_user(17, seed=3) == sample_user(17, seed=3)
    assert sample_user(17, seed=3) != sample_user(17, seed=4)


def test_journeys_look_like_car_shopping():
    users = [sample_user(i) for i in range(1, 301)]
    counts = [len(u.behaviors) for u in users]
    assert 80 <= sum(counts) / len(counts) <= 100
    actions = Counter(b.action for u in users for b in u.behaviors)
    assert set(actions) == {
        "browse",
        "search",
        "compare",
        "click",
        "app_use",
        "visit",
        "add_to_cart",
        "purchase",
    }
    assert actions["browse"] > actions["purchase"] > 0
    for user in users:
        times = [b.occurred_at for b in user.behaviors]
        assert times == sorted(times)
    places = {b.place for u in users for b in u.behaviors if b.action == "visit"}
    assert any("4S店" in p for p in places) and any("俱乐部" in p for p in places)
    assert set(users[0].profile) >= {"age", "city", "interests", "budget", "purchase_intent"}


def test_rules_find_conversions_and_merged_browses_in_the_sample():
    users = [sample_user(i) for i in range(1, 101)]
    inputs = [
        UserInput(
            u.user_id,
            u.profile,
            1,
            [b._replace(id=n) for n, b in enumerate(u.behaviors)],
        )
        for u in users
    ]
    results = make_extractor("rules").extract(inputs)
    events = [e for user_events in results.values() for e in user_events]
    types = Counter(e.event_type for e in events)
    assert types["purchase"] and types["store_visit"] and types["add_to_cart"]
    assert max(e.context.get("count", 1) for e in events) >= 3
    assert len(events) < sum(len(u.behaviors) for u in users) * 0.7  # events are a shorter sequence


@pytest.mark.django_db
def test_the_command_is_idempotent(run):
    out, _ = run("generate_sample_data", "--users", "30", "--seed", "7")
    assert "30 users (30 new profiles)" in out
    behaviors = Behavior.objects.count()
    assert behaviors == sum(len(sample_user(i, 7).behaviors) for i in range(1, 31))
    out, _ = run("generate_sample_data", "--users", "30", "--seed", "7")
    assert "(0 new profiles)" in out and f"{behaviors} behaviours (0 new)" in out
    assert Behavior.objects.count() == behaviors
    assert UserProfile.objects.get(user_id="u0000001").attributes == sample_user(1, 7).profile


def test_ids_past_the_user_id_limit_are_refused_before_anything_is_written(db, run):
    """A long prefix with a large --start made 131-character ids (SQLite kept them, unreachable by
    --users; PostgreSQL failed with a traceback from COPY)."""
    from django.core.management.base import CommandError

    from extraction.models import UserProfile

    with pytest.raises(CommandError, match="^--prefix and --start make user ids of up to 131 characters"):
        run("generate_sample_data", "--users", "1", "--prefix", "p" * 100, "--start", str(10**30))
    assert not UserProfile.objects.exists()
