import csv
import io
import json
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from extraction.extractors import BehaviorRecord, EventDraft, UserInput, make_extractor
from extraction.models import ExtractedEvent, UserProfile
from extraction.services import Outcome, behaviors_insert, extraction_results_save
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.plans import SORT_NODE, index_path_plan
from tests.test_bad_parameters import forged_cursor

pytestmark = pytest.mark.django_db
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


@pytest.fixture
def extracted(make_users):
    """Three users with behaviours (search, browse ×2, purchase), extracted by the rules."""
    ids = [f"u00{i}" for i in range(1, 4)]
    behaviors_insert(
        [
            BehaviorRecord(
                user_id, action, T0 + timedelta(days=n, minutes=m), item="P7" if action != "search" else "SUV"
            )
            for n, user_id in enumerate(ids)
            for m, action in enumerate(["search", "browse", "browse", "purchase"])
        ]
    )
    UserProfile.objects.filter(user_id="u001").update(attributes={"city": "北京", "age": 30})
    job_drain(job_start(enqueue=False).id)
    return ids


def test_a_user_has_its_profile_behaviour_count_and_state(api, extracted):
    body = api("reader").get("/api/v1/users/u001/").json()
    assert body["user_id"] == "u001"
    assert body["attributes"] == {"city": "北京", "age": 30}
    assert body["behavior_count"] == 4
    assert body["needs_extraction"] is False
    assert body["extraction_state"]["status"] == "succeeded"
    assert body["extraction_state"]["event_count"] == 3
    assert api("reader").get("/api/v1/users/nobody/").status_code == 404


def test_the_extraction_state_needs_its_own_permission_as_in_the_admin(api, extracted, personas):
    """view_userprofile alone showed the state (its errors among it), which the admin hides."""
    from django.contrib.auth.models import Permission

    from eventproject.api import auth_cache_clear

    profiles_only = personas["nobody"]
    profiles_only.user_permissions.add(Permission.objects.get(codename="view_userprofile"))
    body = api("nobody").get("/api/v1/users/u001/").json()
    assert (body["user_id"], body["extraction_state"]) == ("u001", None)
    profiles_only.user_permissions.add(Permission.objects.get(codename="view_extractionstate"))
    auth_cache_clear()  # not the token's permissions remembered a moment ago
    assert api("nobody").get("/api/v1/users/u001/").json()["extraction_state"]["status"] == "succeeded"


def test_a_user_never_extracted_needs_it(api, make_users):
    make_users(1)
    body = api("reader").get("/api/v1/users/u001/").json()
    assert (body["needs_extraction"], body["extraction_state"]) == (True, None)


def test_a_users_events_come_in_time_order(api, extracted):
    events = api("reader").get("/api/v1/users/u002/events/").json()["results"]
    assert [(e["sequence"], e["event_type"], e["label"], e["category"]) for e in events] == [
        (1, "search", "搜索", "engagement"),
        (2, "browse_model", "浏览车型", "engagement"),
        (3, "purchase", "购买", "conversion"),
    ]
    assert events[1]["context"]["count"] == 2 and len(events[1]["behavior_ids"]) == 2
    assert events[0]["starts_at"] == "2024-06-02T18:00:00+08:00"
    assert api("reader").get("/api/v1/users/nobody/events/").status_code == 404


def test_events_are_filtered_by_user_type_category_and_time(api, extracted):
    client = api("reader")

    def ids(query):
        response = client.get(f"/api/v1/events/?{query}")
        assert response.status_code == 200, response.json()
        return [(e["user_id"], e["event_type"]) for e in response.json()["results"]]

    assert len(ids("")) == 9
    assert ids("user=u003") == [("u003", "search"), ("u003", "browse_model"), ("u003", "purchase")]
    assert ids("type=purchase") == [("u001", "purchase"), ("u002", "purchase"), ("u003", "purchase")]
    assert ids("category=conversion&user=u002") == [("u002", "purchase")]
    assert ids("since=2024-06-02T00:00:00Z&until=2024-06-03T00:00:00Z") == [
        ("u002", "search"),
        ("u002", "browse_model"),
        ("u002", "purchase"),
    ]


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's planner")
def test_a_types_events_are_read_in_id_order_from_its_index_not_sorted(api, extracted):
    """The list pages by id: a type's events must come from an index in that order, not all of a
    type's events be found and sorted for each page (millions, for a common type)."""
    client = api("reader")
    with CaptureQueriesContext(connection) as queries:
        client.get("/api/v1/events/?type=purchase")
    plan = index_path_plan(
        next(q["sql"] for q in queries.captured_queries if "extraction_extractedevent" in q["sql"])
    )
    assert "Index Scan using event_type_id" in plan, plan
    assert not SORT_NODE.search(plan), plan


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("category=sale", {"category": ['"sale" is not a valid choice.']}),
        (
            "since=yesterday",
            {
                "since": [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            },
        ),
        ("since=2024-06-02T00:00Z&until=2024-06-01T00:00Z", {"until": ["must be later than since"]}),
    ],
)
def test_bad_event_filters_are_a_400_naming_the_field(api, extracted, query, errors):
    response = api("reader").get(f"/api/v1/events/?{query}")
    assert response.status_code == 400
    assert response.json() == errors


def test_events_come_in_cursor_pages(api, extracted):
    client = api("reader")
    first = client.get("/api/v1/events/?page_size=4").json()
    second = client.get(first["next"]).json()
    third = client.get(second["next"]).json()
    assert [len(p["results"]) for p in (first, second, third)] == [4, 4, 1]
    assert third["next"] is None
    seen = [e["id"] for p in (first, second, third) for e in p["results"]]
    assert seen == sorted(seen) and len(set(seen)) == 9


def test_events_export_as_csv(api, extracted):
    response = api("reader").get("/api/v1/events/export.csv?user=u001")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="events.csv"'
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["event_type"] for r in rows] == ["search", "browse_model", "purchase"]
    assert rows[2]["label"] == "购买" and rows[2]["category"] == "conversion"
    assert json.loads(rows[1]["context"])["count"] == 2
    assert rows[0]["starts_at"] == "2024-06-01T10:00:00+00:00"


def test_events_export_as_json_lines(api, extracted):
    response = api("reader").get("/api/v1/events/export.jsonl?type=purchase")
    assert response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [(e["user_id"], e["event_type"], e["label"]) for e in lines] == [
        ("u001", "purchase", "购买"),
        ("u002", "purchase", "购买"),
        ("u003", "purchase", "购买"),
    ]
    assert api("reader").get("/api/v1/events/export.jsonl?category=x").status_code == 400
    assert api(None).get("/api/v1/events/export.jsonl").status_code == 401


@pytest.mark.parametrize("path_id", ["crm/42", "crm%2F42"])
def test_a_user_id_with_slashes_is_read_at_its_own_path(api, path_id):
    """Imports take any id but NUL; one holding '/' (a CRM's "crm/42") was a 404 at both paths."""
    events_for("crm/42", 2)
    events_for("crm", 1)
    client = api("reader")
    assert client.get(f"/api/v1/users/{path_id}/").json()["user_id"] == "crm/42"
    assert len(client.get(f"/api/v1/users/{path_id}/events/").json()["results"]) == 2
    assert len(client.get("/api/v1/users/crm/events/").json()["results"]) == 1
    assert client.get("/api/v1/users/crm/43/").status_code == 404


def events_for(user_id: str, count: int) -> None:
    """`count` events for one user (a profile made for it)."""
    user = UserInput(user_id, {}, 1, [])
    UserProfile.objects.create(user_id=user_id)
    drafts = [EventDraft("browse_model", "engagement", "浏览车型", T0, T0, [1], {"model": "P7"})] * count
    extraction_results_save(outcomes=[Outcome(user_id, user, drafts)], extractor=make_extractor("rules"))


def test_a_user_with_many_events_gets_them_a_page_at_a_time(api):
    events_for("busy", 250)
    client = api("reader")
    page = client.get("/api/v1/users/busy/events/").json()
    assert len(page["results"]) == 100 and page["previous"] is None
    sequences = [event["sequence"] for event in page["results"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        sequences += [event["sequence"] for event in page["results"]]
    assert sequences == list(range(1, 251))
    assert len(client.get("/api/v1/users/busy/events/?page_size=5000").json()["results"]) == 250  # ≤ 1,000
    forged = client.get("/api/v1/users/busy/events/?cursor=" + forged_cursor(f"p={2**40}"))
    assert forged.status_code == 404 and forged.json() == {"detail": "Invalid cursor"}


def export_peak_bytes(client, events: int) -> int:
    """Peak Python memory while streaming an export of `events` events."""

    users = [UserInput(f"m{i:05d}", {}, 1, []) for i in range(events // 10)]
    UserProfile.objects.bulk_create([UserProfile(user_id=u.user_id) for u in users], ignore_conflicts=True)
    drafts = [EventDraft("browse_model", "engagement", "浏览车型", T0, T0, [1], {"model": "P7"})] * 10
    extraction_results_save(
        outcomes=[Outcome(u.user_id, u, drafts) for u in users], extractor=make_extractor("rules")
    )
    tracemalloc.start()
    try:
        size = sum(len(chunk) for chunk in client.get("/api/v1/events/export.jsonl").streaming_content)
        return tracemalloc.get_traced_memory()[1], size
    finally:
        tracemalloc.stop()
        ExtractedEvent.objects.all().delete()


def test_the_export_holds_constant_memory(api):
    client = api("reader")
    export_peak_bytes(client, 500)  # warm up: first-use imports and caches are not the export's
    small_peak, small_size = export_peak_bytes(client, 5_000)
    big_peak, big_size = export_peak_bytes(client, 25_000)
    assert big_size > 4.9 * small_size
    # Five times the rows, the same memory: rows are streamed in batches, never all held at once.
    assert big_peak < small_peak * 1.1
