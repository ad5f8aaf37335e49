"""The LLM's answer is untrusted: one user's behaviour text (a search keyword) can steer what the
model says about another user packed into the same prompt. The hostile texts are in
tests/fixtures/hostile/llm_steering.json; the fake server obeys them as a gullible model would."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from extraction.extractors import (
    BehaviorRecord,
    Control,
    ExtractionError,
    UserInput,
    llm_answers,
    make_extractor,
)
from extraction.extractors.llm_answers import call_read, parse_answer
from extraction.extractors.llm_packing import user_parts
from extraction.llm_client import Completion
from extraction.llm_tokens import without_thinking
from extraction.models import ExtractedEvent, LLMCacheEntry
from extraction.services import behaviors_insert
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.cluster import ROOT
from tests.fake_openai import answer_events

pytestmark = pytest.mark.django_db(transaction=True)
STEERING = json.loads((Path(__file__).parent / "fixtures/hostile/llm_steering.json").read_text())
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)
VICTIM_ACTIONS = ["search", "browse", "browse", "compare"]  # no conversion among them


def attacker(text: str) -> UserInput:
    return UserInput("u1", {}, 1, [BehaviorRecord("u1", "search", T0, item=text, id=1001)])


def victim(own_text: str = "") -> UserInput:
    records = [
        BehaviorRecord("u2", action, T0 + timedelta(minutes=n), item=own_text or "汉EV", id=2001 + n)
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
        [BehaviorRecord("u1", "search", T0, item="汉EV")]
        + [
            BehaviorRecord("u2", a, T0 + timedelta(minutes=n), item=text)
            for n, a in enumerate(VICTIM_ACTIONS)
        ]
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


# Hostile shapes: whatever one answer holds, it costs that call or that user, never the job -------
def test_a_number_too_long_to_read_makes_the_reply_malformed_not_a_crash():
    reply = '{"users": {"u1": [{"event_type": "search", "context": {"n": ' + "9" * 5_000 + "}}]}}"
    with pytest.raises(ValueError, match="a number too long to read"):
        parse_answer(reply)


def test_a_call_whose_reply_cannot_be_read_fails_that_call_only(llm_server):
    extractor = make_extractor("llm", {"max_concurrency": 1})
    parts = user_parts(victim(), extractor.budget)
    reply = '{"users": {"u2": [{"context": {"n": ' + "9" * 5_000 + "}}]}}"
    outcome = call_read(parts, Completion(reply, 10, 10, cached=False, key="k"), allow_new_types=False)
    assert (outcome.failure, outcome.events) == ("the reply's JSON holds a number too long to read", {})


OK_MESSAGE = {"role": "assistant", "content": "{}"}


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [{"index": 0, "finish_reason": "content_filter", "message": None}]},
        {"choices": [{"index": 0, "finish_reason": "stop", "delta": {"content": "{}"}}]},  # a stream's
        {"choices": [{"index": 0, "message": OK_MESSAGE}], "usage": {"prompt_tokens": "10"}},
        [],  # not an object at all
    ],
    ids=["null message", "no message", "usage in words", "a list"],
)
def test_an_odd_200_answer_costs_its_call_at_most_never_the_chunk(llm_server, answer):
    """It raised from the client (AttributeError, TypeError): the whole chunk failed as a bug, the
    users whose answers were already valid too."""
    from tests.test_llm_extractor import users

    llm_server.bodies.append((200, answer))
    extractor = make_extractor("llm", {"max_concurrency": 1, "token_budget": 1000})
    results = extractor.extract(users(4, behaviors=40), Control())  # a call each
    failed = {user: str(result) for user, result in results.items() if isinstance(result, ExtractionError)}
    assert len(results) == 4 and len(failed) <= 1, failed
    assert all(message.startswith(("the LLM", "the model")) for message in failed.values()), failed


def test_a_server_that_only_streams_fails_the_job_in_words(llm_server, make_users, monkeypatch):
    """Its event stream reached the client as a string: the job failed with "AttributeError: 'str'
    object has no attribute 'usage'"."""
    from tests import fake_openai

    def stream_only(handler):
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        data = b'data: {"choices":[{"index":0,"delta":{"content":"{}"}}]}\n\ndata: [DONE]\n\n'
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    monkeypatch.setattr(fake_openai.Handler, "do_POST", stream_only)
    make_users(10, behaviors=5)
    job = job_start(extractor="llm", chunk_size=5, max_attempts=1, enqueue=False)  # no backoffs
    job_drain(job.id)
    job.refresh_from_db()
    assert "Error" not in job.error + "".join(job.items.values_list("error", flat=True))
    assert set(job.items.values_list("error", flat=True)) <= {
        "",
        "the LLM endpoint's answer is not a chat completion (it sent str)",
    }


def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_timeout(llm_server, monkeypatch, settings):
    """httpx's timeout bounds each read: a body of keep-alive spaces sent a byte every 0.2 s (as
    some gateways do) kept the call going 8 s past its 1 s timeout."""
    import time

    from tests import fake_openai

    calls = []

    def drip(handler):
        calls.append(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)))
        body = b" " * 30 + b'{"choices":[]}'
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for byte in body:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up

    monkeypatch.setattr(fake_openai.Handler, "do_POST", drip)
    settings.EXTRACTION_LLM_MAX_RETRIES = 0
    extractor = make_extractor("llm", {"max_concurrency": 1, "timeout": 1.0})
    started = time.monotonic()
    results = extractor.extract([victim()], Control())
    assert time.monotonic() - started < 1.5 * len(calls)  # each call given up at its 1 s
    assert str(results["u2"]).endswith("(last: no answer within 1 s (options.timeout))")


def test_an_error_validating_one_users_events_stays_with_that_user(llm_server, monkeypatch):
    extractor = make_extractor("llm", {"max_concurrency": 1})
    parts = [*user_parts(attacker("hello"), extractor.budget), *user_parts(victim(), extractor.budget)]
    real = llm_answers.events_from

    def events_from(answer, part, **options):
        if part.user.user_id == "u1":
            raise AttributeError("'int' object has no attribute 'msg'")  # any bug a shape might hit
        return real(answer, part, **options)

    monkeypatch.setattr(llm_answers, "events_from", events_from)
    reply = json.dumps(
        {"users": {"u1": [], "u2": answer_events([[2001, "", "search", "汉EV", *[""] * 3, 0]])}}
    )
    outcome = call_read(parts, Completion(reply, 10, 10, cached=False, key="k"), allow_new_types=False)
    by_user = {part.user.user_id: id(part) for part in parts}
    assert outcome.invalid == {by_user["u1"]: "the user's events could not be read (AttributeError)"}
    assert list(outcome.events) == [by_user["u2"]]


def test_reading_a_reply_of_unclosed_think_tags_takes_linear_time():
    """20,000 unclosed tags took a backtracking regular expression 15 s, holding the GIL all along
    (so the lease keeper could not renew); 100,000 took minutes. Linear: moments. Read in a
    process of its own, whose time can be bounded without waiting for it; the bound is on the
    CPU time the reading took, which a busy machine does not stretch as it stretches the clock."""
    script = (
        "import time, django; django.setup()\n"
        "from extraction.extractors.llm_answers import parse_answer\n"
        "started = time.process_time()\n"
        "assert parse_answer('<think>' * 100_000 + '{\"users\": {\"a\": []}}') == {'a': []}\n"
        "print(time.process_time() - started)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, check=True, timeout=300, capture_output=True, text=True
    )
    assert float(result.stdout) < 2, result.stdout


def test_think_blocks_are_dropped_and_an_unclosed_one_is_kept():
    assert without_thinking("a<think>x</think>b<THINK>y<think>z</Think>c") == "abc"
    assert without_thinking("a</think>b<think>never closed") == "a</think>b<think>never closed"
