import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from extraction.extractors import BehaviorRecord, UserInput, make_extractor
from extraction.extractors.rules import load_ruleset

T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


def behavior(id, action, minutes=0, **fields):
    return BehaviorRecord(
        user_id="u1", id=id, action=action, occurred_at=T0 + timedelta(minutes=minutes), **fields
    )


def extract(*behaviors):
    user = UserInput("u1", {}, 1, list(behaviors))
    return make_extractor("rules").extract([user])["u1"]


def summary(events):
    return [(e.event_type, e.category, e.behavior_ids) for e in events]


def test_purchase_add_to_cart_and_dealer_visits_are_conversions():
    events = extract(
        behavior(1, "add_to_cart", 0, item="比亚迪 汉EV"),
        behavior(2, "visit", 10, place="比亚迪4S店(朝阳店)", duration_seconds=3600),
        behavior(3, "visit", 200, place="Audi DEALER Center"),
        behavior(4, "purchase", 300, item="比亚迪 汉EV", extra={"price": 210000}),
    )
    assert summary(events) == [
        ("add_to_cart", "conversion", [1]),
        ("store_visit", "conversion", [2]),
        ("store_visit", "conversion", [3]),
        ("purchase", "conversion", [4]),
    ]
    assert [e.label for e in events] == ["加购", "到店", "到店", "购买"]
    assert events[1].ends_at == T0 + timedelta(minutes=10, hours=1)
    assert events[3].context == {"action": "purchase", "item": "比亚迪 汉EV", "price": 210000}


def test_other_visits_are_place_visits():
    (event,) = extract(behavior(1, "visit", place="海底捞(朝阳店)", duration_seconds=5400))
    assert (event.event_type, event.category, event.label) == ("place_visit", "engagement", "到访")
    assert event.context == {"action": "visit", "place": "海底捞(朝阳店)", "duration_seconds": 5400}


def test_consecutive_browses_of_one_model_within_30_minutes_merge():
    events = extract(
        behavior(1, "browse", 0, item="P7", app="懂车帝", duration_seconds=60),
        behavior(2, "browse", 20, item="P7", app="懂车帝", duration_seconds=30),
        behavior(3, "browse", 50, item="P7", app="懂车帝", duration_seconds=90),  # 30 min after the last
    )
    (event,) = events
    assert summary(events) == [("browse_model", "engagement", [1, 2, 3])]
    assert event.context == {
        "action": "browse",
        "app": "懂车帝",
        "model": "P7",
        "count": 3,
        "total_duration_seconds": 180,
    }
    assert (event.starts_at, event.ends_at) == (T0, T0 + timedelta(minutes=50, seconds=90))


def test_browses_split_on_a_long_gap_another_model_or_another_action():
    events = extract(
        behavior(1, "browse", 0, item="P7"),
        behavior(2, "browse", 31, item="P7"),  # more than 30 minutes later
        behavior(3, "browse", 32, item="汉EV"),  # another model
        behavior(4, "search", 33, item="汉EV 续航"),
        behavior(5, "browse", 34, item="汉EV"),  # not consecutive: a search came between
        behavior(6, "browse", 35),  # no model: nothing to merge on
        behavior(7, "browse", 36),
    )
    assert [e.behavior_ids for e in events] == [[1], [2], [3], [4], [5], [6], [7]]


def test_search_compare_click_and_app_use_keep_their_context():
    events = extract(
        behavior(1, "search", 0, item="20万 SUV", app="汽车之家"),
        behavior(2, "compare", 1, item="汉EV vs Model 3"),
        behavior(3, "click", 2, item="ad:试驾", media="抖音"),
        behavior(4, "app_use", 3, app="微信", duration_seconds=600),
    )
    assert [(e.event_type, e.label) for e in events] == [
        ("search", "搜索"),
        ("compare", "对比"),
        ("click", "点击"),
        ("app_use", "使用应用"),
    ]
    assert events[0].context["keyword"] == "20万 SUV"
    assert events[1].context["models"] == "汉EV vs Model 3"
    assert events[2].context["media"] == "抖音"
    assert events[3].context == {"action": "app_use", "app": "微信", "duration_seconds": 600}


def test_actions_match_case_insensitively_and_in_chinese():
    events = extract(behavior(1, "  Purchase "), behavior(2, "浏览", 1, item="L7"), behavior(3, "下单", 2))
    assert [e.event_type for e in events] == ["purchase", "browse_model", "purchase"]


def test_unknown_actions_become_other():
    (event,) = extract(behavior(1, "share", item="x"))
    assert (event.event_type, event.category, event.label) == ("other", "engagement", "其他")


def test_no_behaviours_give_no_events():
    assert extract() == []


def test_a_users_events_depend_only_on_that_users_behaviours():
    """Not on the other users of the chunk, their order, or what the extractor decided before (its
    (action, place) decisions are cached across users and chunks)."""
    mine = [behavior(i, a, i * 7, item=f"m{i % 2}") for i, a in enumerate(["browse"] * 5 + ["visit"], 1)]
    other = [behavior(100 + i, a, i, place="4S店") for i, a in enumerate(["visit", "browse", "purchase"])]
    alone = extract(*mine)
    warmed = make_extractor("rules")
    users = [UserInput("other", {}, 1, other), UserInput("u1", {}, 1, mine)]
    assert warmed.extract(users)["u1"] == alone
    assert warmed.extract(users[::-1])["u1"] == alone
    # Alternating models: no run to merge.
    assert summary(alone) == [("browse_model", "engagement", [n]) for n in range(1, 6)] + [
        ("place_visit", "engagement", [6])
    ]


def test_the_ruleset_file_in_settings_replaces_the_default(settings, tmp_path):
    ruleset = {
        "version": "custom-1",
        "default_event_type": "noise",
        "event_types": {
            "noise": {"label": "噪声", "category": "engagement"},
            "lead": {"label": "线索", "category": "conversion"},
        },
        "rules": [{"event_type": "lead", "actions": ["test_drive"]}],
    }
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(ruleset, ensure_ascii=False), encoding="utf-8")
    settings.EXTRACTION_RULES_FILE = str(path)
    extractor = make_extractor("rules")
    events = extractor.extract([UserInput("u1", {}, 1, [behavior(1, "test_drive"), behavior(2, "purchase")])])
    assert [(e.event_type, e.label) for e in events["u1"]] == [("lead", "线索"), ("noise", "噪声")]
    assert extractor.version == "1+custom-1"


@pytest.mark.parametrize(
    ("ruleset", "message"),
    [
        ([], "must be a JSON object"),
        ({"version": 1, "event_types": {}, "rules": []}, "missing key 'default_event_type'"),
        (
            {
                "version": 1,
                "default_event_type": "x",
                "rules": [],
                "event_types": {"x": {"label": "x", "category": "sale"}},
            },
            "event type 'x' needs a category",
        ),
        (
            {
                "version": 1,
                "default_event_type": "x",
                "event_types": {"x": {"category": "engagement"}},
                "rules": [{"event_type": "y", "actions": ["a"]}],
            },
            "rule 1 names unknown event type 'y'",
        ),
        (
            {
                "version": 1,
                "default_event_type": "x",
                "event_types": {"x": {"category": "engagement"}},
                "rules": [{"event_type": "x", "actions": []}],
            },
            "rule 1 needs a non-empty list of action names",
        ),
    ],
)
def test_a_broken_ruleset_is_refused_with_the_reason(tmp_path, ruleset, message):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(ruleset))
    with pytest.raises(ImproperlyConfigured, match=message):
        load_ruleset(str(path))


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ValidationError) as caught:
        make_extractor("rules", {"temperature": 0.2})
    assert "options.temperature" in caught.value.message_dict


def test_an_inputs_fingerprint_stays_what_it_was():
    """Stored with each user's state: the same input must hash as it did when it was stored."""
    user = UserInput(
        "u1",
        {"城市": "北京", "age": 28},
        3,
        [
            BehaviorRecord(
                "u1", "browse", datetime(2024, 6, 1, 10, tzinfo=UTC), item="汉EV", duration_seconds=12.5, id=7
            ),
            BehaviorRecord(
                "u1",
                "visit",
                datetime(2024, 6, 2, tzinfo=UTC),
                place="4S店",
                extra={"b": 1, "a": [1, 2]},
                id=9,
            ),
        ],
    )
    assert user.fingerprint() == "a9a104e43a9f40f5875b99095813ed946a1fb45664484188c265089077e02310"
