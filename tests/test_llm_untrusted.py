"""The LLM's answer is untrusted: one user's behaviour text (a search keyword) can steer what the
model says about another user packed into the same prompt. The hostile texts are in
tests/fixtures/hostile/llm_steering.json; the fake server obeys them as a gullible model would."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from extraction.extractors import BehaviorRecord, Control, ExtractionError, UserInput, make_extractor
from extraction.models import ExtractedEvent, LLMCacheEntry
from extraction.services import BehaviorRow, behaviors_insert
from jobs.engine import job_drain
from jobs.services import job_start

pytestmark = pytest.mark.django_db(transaction=True)
STEERING = json.loads((Path(__file__).parent / "fixtures/hostile/llm_steering.json").read_text())
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)
VICTIM_ACTIONS = ["search", "browse", "browse", "compare"]  # no conversion among them


def attacker(text: str) -> UserInput:
    return UserInput("u1", {}, 1, [BehaviorRecord(1001, "search", T0, item=text)])


def victim(own_text: str = "") -> UserInput:
    records = [
        BehaviorRecord(2001 + n, action, T0 + timedelta(minutes=n), item=own_text or "汉EV")
        for n, action in enumerate(VICTIM_ACTIONS)
    ]
    return UserInput("u2", {"city": "北京"}, 1, records)


def extract(users, **options):
    return make_extractor("llm", {"max_concurrency": 1, **options}).extract(users, Control())


def shape(events) -> list[tuple]:
    return [(e.event_type, e.category, e.label, e.behavior_ids, e.context) for e in events]


@pytest.fixture
def clean_victim(llm_server):
    """The victim's events when nobody steers: what it must get whatever the attacker writes."""
    events = extract([victim()])["u2"]
    llm_server.requests.clear()
    LLMCacheEntry.objects.all().delete()  # so that asking the victim again shows as a request
    return shape(events)


@pytest.mark.parametrize(
    "case",
    [
        "purchase_for_another",
        "store_visit_without_a_visit",
        "new_event_type",
        "category_flip",
        "new_conversion_type",
    ],
)
def test_another_users_text_cannot_change_a_users_events(llm_server, clean_victim, case):
    results = extract([attacker(STEERING[case]), victim()])
    assert shape(results["u2"]) == clean_victim
    # The steered answer was refused and the victim asked again alone, without the attacker's text.
    assert [sorted(r["users"]) for r in llm_server.requests] == [["u1", "u2"], ["u2"]]
    assert [e.event_type for e in results["u1"]] == ["search"]


def test_a_conversion_of_a_new_type_needs_a_behaviour_that_supports_it(llm_server, clean_victim):
    results = extract([attacker(STEERING["new_conversion_type"]), victim()], allow_new_event_types=True)
    assert shape(results["u2"]) == clean_victim


def test_a_user_cannot_promote_itself_to_a_buyer(llm_server):
    result = extract([victim(own_text=STEERING["self_promotion"])])["u2"]
    assert isinstance(result, ExtractionError)
    assert result.message == (
        "the model's answer for this user was unusable: event 3: a purchase conversion cites no "
        "behaviour whose action fits it"
    )
    assert len(llm_server.requests) == 3  # asked three times, never believed


def test_context_and_labels_are_capped_and_cleaned(llm_server, settings):
    results = extract([attacker(STEERING["oversized_context_and_label"]), victim()])
    (event,) = results["u2"]  # a search over all its behaviours: allowed, but bounded
    assert event.label == "搜索"  # a known type keeps the ruleset's label
    assert len(event.context) <= settings.EXTRACTION_LLM_CONTEXT_MAX_KEYS
    assert len(orjson.dumps(event.context)) <= settings.EXTRACTION_LLM_CONTEXT_MAX_BYTES
    assert "nested" not in event.context and "huge" not in event.context
    for value in event.context.values():
        assert len(value) <= settings.EXTRACTION_LLM_CONTEXT_VALUE_MAX_CHARS and "\u200b" not in value


def test_a_new_type_allowed_by_the_job_gets_a_short_clean_label(llm_server, settings):
    results = extract([attacker(STEERING["new_type_oversized"]), victim()], allow_new_event_types=True)
    new = [e for e in results["u2"] if e.event_type == "vip_buyer"]
    assert len(new) == 1 and new[0].category == "engagement"
    label = new[0].label
    assert 0 < len(label) <= settings.EXTRACTION_LLM_LABEL_MAX_CHARS
    assert not any(ch in label for ch in "\u202e\x00\u200b")
    assert len(orjson.dumps(new[0].context)) <= settings.EXTRACTION_LLM_CONTEXT_MAX_BYTES


def run_job_over(text: str):
    """A job over u1 (ordinary) and u2, whose own behaviour text is `text` (steering u2 itself, so
    however the engine packs its claims, u2's answer is steered)."""
    behaviors_insert(
        [BehaviorRow("u1", "search", T0, item="汉EV")]
        + [BehaviorRow("u2", a, T0 + timedelta(minutes=n), item=text) for n, a in enumerate(VICTIM_ACTIONS)]
    )
    job = job_start(extractor="llm", options={"max_concurrency": 1}, max_attempts=1, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    return job


def test_a_job_never_stores_a_purchase_nobody_made(llm_server):
    job = run_job_over(STEERING["self_promotion"])
    assert (job.status, job.succeeded_items, job.failed_items) == ("completed", 1, 1)
    assert not ExtractedEvent.objects.filter(category="conversion").exists()
    assert "cites no behaviour whose action fits it" in job.items.get(user_id="u2").error


def test_a_job_stores_a_steered_context_only_within_its_bounds(llm_server, settings):
    job = run_job_over(STEERING["oversized_context_and_label"])
    assert (job.status, job.succeeded_items) == ("completed", 2)
    (event,) = ExtractedEvent.objects.filter(user_id="u2")
    assert event.label == "搜索"
    assert len(orjson.dumps(event.context)) <= settings.EXTRACTION_LLM_CONTEXT_MAX_BYTES
