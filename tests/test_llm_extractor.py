"""The LLM extractor against a real HTTP server speaking the chat-completions protocol."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import OperationalError, connection

from extraction.extractors import (
    BehaviorRecord,
    Control,
    ExtractionError,
    ExtractorFatalError,
    UserInput,
    make_extractor,
)
from extraction.extractors.llm_answers import parse_answer
from extraction.extractors.llm_packing import user_parts
from extraction.extractors.llm_prompt import USERS_MARKER, messages
from extraction.extractors.llm_slots import Slots
from extraction.llm_cache import cache_prune
from extraction.llm_tokens import estimate_tokens
from extraction.models import LLMCacheEntry
from tests.cluster import wait_for

# Transactional: the calls run in threads with their own connections (cache, the provider's budget).
pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)
ACTIONS = ["search", "browse", "browse", "compare", "visit", "add_to_cart", "purchase"]


def users(count, behaviors=7, start=1):
    """UserInputs u1… with behaviours whose ids are unique across users."""
    made = []
    for n in range(start, start + count):
        records = [
            BehaviorRecord(
                user_id=f"u{n}",
                id=n * 1000 + i,
                action=ACTIONS[i % len(ACTIONS)],
                occurred_at=T0 + timedelta(minutes=5 * i),
                item="汉EV",
                place="比亚迪4S店" if ACTIONS[i % len(ACTIONS)] == "visit" else "",
                duration_seconds=60,
            )
            for i in range(behaviors)
        ]
        made.append(UserInput(f"u{n}", {"city": "北京", "age": 30}, 1, records))
    return made


def extract(batch, **options):
    """(the Control that heard what was paid, the results)"""
    extractor, control = make_extractor("llm", {"max_concurrency": 2, **options}), Control()
    return control, extractor.extract(batch, control)


def test_valid_replies_become_events_with_times_from_the_behaviours(llm_server):
    batch = users(3)
    control, results = extract(batch)
    assert len(llm_server.requests) == 1  # three small users packed into one call
    events = results["u2"]
    assert [(e.event_type, e.category, e.label) for e in events] == [
        ("search", "engagement", "搜索"),
        ("browse_model", "engagement", "浏览车型"),
        ("compare", "engagement", "对比"),
        ("store_visit", "conversion", "到店"),
        ("add_to_cart", "conversion", "加购"),
        ("purchase", "conversion", "购买"),
    ]
    browse = events[1]
    assert browse.behavior_ids == [2001, 2002]
    assert (browse.starts_at, browse.ends_at) == (
        T0 + timedelta(minutes=5),
        T0 + timedelta(minutes=10, seconds=60),
    )
    assert set(control.usage) == {"u1", "u2", "u3"}
    assert all(
        prompt > 0 and completion > 0 and reasoning == 0
        for prompt, completion, reasoning in control.usage.values()
    )


@pytest.mark.parametrize("directive", ["think", "fence"])
def test_think_blocks_and_code_fences_are_read_through(llm_server, directive):
    llm_server.script.append(directive)
    _, results = extract(users(2))
    assert all(isinstance(r, list) and r for r in results.values())
    assert len(llm_server.requests) == 1


def test_a_429_is_retried_after_retry_after(llm_server):
    llm_server.script.append("429")
    llm_server.retry_after = "1"
    started = time.monotonic()
    _, results = extract(users(2))
    assert time.monotonic() - started >= 1.0  # honoured, although the backoff alone is 0.05 s
    assert [r["status"] for r in llm_server.requests] == [429, 200]
    assert all(isinstance(r, list) for r in results.values())


def test_a_500_is_retried(llm_server):
    llm_server.script.extend(["500", "500"])
    _, results = extract(users(2))
    assert [r["status"] for r in llm_server.requests] == [500, 500, 200]
    assert all(isinstance(r, list) for r in results.values())


def test_a_timeout_is_retried(llm_server):
    llm_server.script.append("timeout")
    llm_server.timeout_seconds = 3
    _, results = extract(users(1), timeout=1.0)
    assert len(llm_server.requests) == 2
    assert isinstance(results["u1"], list)


def test_endless_server_errors_fail_the_users_not_the_job(llm_server, settings):
    settings.EXTRACTION_LLM_MAX_RETRIES = 1
    llm_server.script.extend(["500"] * 50)
    _, results = extract(users(1))
    assert isinstance(results["u1"], ExtractionError)
    assert not results["u1"].permanent
    assert "HTTP 500" in results["u1"].message


def test_a_malformed_reply_splits_the_call_and_retries_the_halves(llm_server):
    llm_server.script.append("malformed")
    _, results = extract(users(4))
    assert [len(r["users"]) for r in llm_server.requests] == [4, 2, 2]
    assert all(isinstance(r, list) and r for r in results.values())


@pytest.mark.parametrize("directive", ["missing", "foreign", "empty"])
def test_a_user_with_an_invalid_part_is_asked_again_alone(llm_server, directive):
    llm_server.script.append(directive)
    _, results = extract(users(3))
    first, second = llm_server.requests[0]["users"], llm_server.requests[1]["users"]
    assert len(first) == 3 and second == [first[0]]  # only the user the reply got wrong
    assert len(llm_server.requests) == 2
    assert all(isinstance(r, list) and r for r in results.values())


def test_extra_users_in_a_reply_are_ignored_and_not_cached(llm_server):
    llm_server.script.append("extra")
    _, results = extract(users(2))
    assert set(results) == {"u1", "u2"}
    assert not LLMCacheEntry.objects.exists()


def test_a_reply_that_cannot_be_read_is_not_cached_so_the_user_is_asked_afresh(llm_server):
    """A cached unreadable reply answered every later try of that same request: one malformed
    answer to a user alone failed that user on every try of every attempt (the chaos suite)."""
    llm_server.script.extend(["malformed", "echo", "deep"])
    _, results = extract(users(1))
    assert isinstance(results["u1"], ExtractionError)  # its three tries got the three bad replies
    assert not LLMCacheEntry.objects.exists()
    _, results = extract(users(1))
    assert isinstance(results["u1"], list) and results["u1"]


def test_an_answer_is_used_when_the_cache_cannot_keep_it(llm_server, monkeypatch, caplog):
    """The answer was paid for: a cache write meeting the database away must not throw it away."""

    def refused(*args, **kwargs):
        raise OperationalError("the server closed the connection")

    monkeypatch.setattr(LLMCacheEntry.objects, "bulk_create", refused)
    _, results = extract(users(2))
    assert all(isinstance(r, list) and r for r in results.values())
    assert "could not keep an answer in the cache" in caplog.text


def test_one_bad_user_cannot_sink_the_others(llm_server):
    llm_server.bad_users = {"u3"}
    _, results = extract(users(5))
    assert isinstance(results["u3"], ExtractionError)
    assert "behaviour ids [-1] are not this user's" in results["u3"].message
    assert all(isinstance(results[f"u{n}"], list) and results[f"u{n}"] for n in (1, 2, 4, 5))
    # u3 was asked three times in all, the others once.
    asked = [u for r in llm_server.requests for u in r["users"]]
    assert asked.count("u3") == 3 and asked.count("u1") == 1


def test_a_wrong_api_key_stops_with_a_clear_message(llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(
        ExtractorFatalError, match=r"rejected the API key \(HTTP 401\); check OPENAI_API_KEY"
    ) as exc:
        extract(users(2))
    assert "Incorrect API key provided" not in str(exc.value)  # the provider's words stay out
    assert len(llm_server.requests) == 1  # not retried


def test_an_unknown_model_stops_with_a_clear_message(llm_server):
    with pytest.raises(ExtractorFatalError, match="does not know model 'gpt-nope'"):
        extract(users(1), model="gpt-nope")


def test_identical_requests_are_answered_from_the_cache(llm_server):
    batch = users(3)
    extract(batch)
    calls = len(llm_server.requests)
    control, results = extract(batch)
    assert len(llm_server.requests) == calls  # nothing sent again
    assert control.usage == {}  # and nothing paid
    assert all(isinstance(r, list) for r in results.values())


def test_pruning_the_cache_deletes_old_answers_only_and_they_are_asked_again(llm_server, run):
    old, recent = users(2), users(2, start=3)
    extract(old)
    LLMCacheEntry.objects.update(created_at=datetime.now(UTC) - timedelta(days=40))
    extract(recent)
    assert LLMCacheEntry.objects.count() == 2

    out, _ = run("prune_llm_cache", "--days", "30", "--dry-run")
    assert out.startswith("would delete 1 cached answers made before")
    assert LLMCacheEntry.objects.count() == 2
    out, _ = run("prune_llm_cache", "--days", "30")
    assert out.startswith("deleted 1 cached answers made before") and out.endswith("; 1 kept\n")

    calls = len(llm_server.requests)
    extract(recent)
    assert len(llm_server.requests) == calls  # still cached
    extract(old)
    assert len(llm_server.requests) == calls + 1  # asked again, and cached again
    assert LLMCacheEntry.objects.count() == 2


def test_the_cache_is_pruned_in_batches_and_days_must_be_within_a_century(llm_server, run):
    for n in range(1, 6):
        extract(users(1, start=n))
    assert cache_prune(datetime.now(UTC) + timedelta(seconds=1), batch_size=2) == 5
    assert not LLMCacheEntry.objects.exists()
    for days in ("-1", "36501", "999999999", "99999999999999999999"):  # the last ones: an OverflowError
        with pytest.raises(CommandError, match=f"--days must be from 0 to 36,500, got {days}"):
            run("prune_llm_cache", "--days", days)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="counts the server's connections")
def test_calls_in_flight_hold_no_database_connection(llm_server):
    """Each call waits for its slot and its answer in a thread of its own (2 × max_concurrency):
    each held a connection for the whole chunk, and max_concurrency 64 used up PostgreSQL's 100."""

    def connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return cursor.fetchone()[0]

    llm_server.latency = 2.0
    before = connections()
    calls = {"max_concurrency": 16, "token_budget": 1000}  # a call each
    chunk = threading.Thread(target=extract, args=(users(40, behaviors=30),), kwargs=calls)
    chunk.start()
    wait_for(lambda: llm_server.in_flight >= 16, timeout=30, what="the calls to go out")
    during = [connections() for _ in range(10) if not time.sleep(0.05)]  # all 16 slots answered later
    chunk.join(60)
    assert max(during) - before <= 4, during


def test_a_user_too_large_for_one_call_is_split_and_merged(llm_server):
    (big,) = users(1, behaviors=140)
    _, results = extract([big], token_budget=3000)
    assert len(llm_server.requests) > 1
    assert all(r["users"] == ["u1"] for r in llm_server.requests)
    events = results["u1"]
    ids = [i for e in events for i in e.behavior_ids]
    assert sorted(ids) == [b.id for b in big.behaviors]  # every behaviour, once, across segments
    assert [e.starts_at for e in events] == sorted(e.starts_at for e in events)


def test_calls_stay_within_the_token_budget_and_the_concurrency(llm_server):
    llm_server.latency = 0.2
    batch = users(40, behaviors=30)
    _, results = extract(batch, token_budget=4000, max_concurrency=3)
    assert llm_server.max_in_flight <= 3
    assert len(llm_server.requests) == make_extractor("llm", {"token_budget": 4000}).estimate(batch)["calls"]
    assert all(isinstance(r, list) for r in results.values())


def test_a_parts_tokens_are_estimated_on_its_text_in_the_prompt(llm_server):
    """Never under what the prompt holds (the budget is kept), and over by at most the two tokens a
    row its own estimate and comma add: no call is cut smaller than the text needs."""
    extractor = make_extractor("llm", {})
    (user,) = users(1, behaviors=60)
    (part,) = user_parts(user, extractor.budget)
    _, asked = messages(extractor.system, [part])
    sent = estimate_tokens(asked["content"].removeprefix(f"{USERS_MARKER}\n"))
    assert sent <= part.tokens <= sent + 2 * len(part.behaviors)


def test_users_without_behaviours_need_no_call(llm_server):
    empty = UserInput("nobody", {}, 1, [])
    _, results = extract([empty])
    assert results == {"nobody": []}
    assert llm_server.requests == []


def test_the_options_are_checked(llm_server):
    with pytest.raises(ValidationError) as caught:
        make_extractor("llm", {"max_concurrency": 0, "temperature": 5.0, "api_key": "x"})
    assert set(caught.value.message_dict) == {
        "options.max_concurrency",
        "options.temperature",
        "options.api_key",
    }


def test_the_answer_parser_reads_what_models_write():
    assert parse_answer('<think>hm</think>```json\n{"users": {"a": []}}\n```') == {"a": []}
    assert parse_answer('Sure! {"users": {"b": [1]}} Hope it helps.') == {"b": [1]}
    for reply, message in [
        ("no json", "no JSON object"),
        ('{"users": [', "no JSON object"),
        ('{"users": {"a": [}', "JSON is malformed"),
        ('{"people": {}}', 'no "users" object'),
        ('{"users": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_answer(reply)


def test_a_freed_slot_goes_to_the_oldest_chunks_call():
    slots = Slots(1)
    older, newer = slots.for_chunk(), slots.for_chunk()
    taken = []

    def call(slot, name):
        with slot:
            taken.append(name)

    with older:  # the only slot is out
        waiters = [
            threading.Thread(target=call, args=(newer, "newer")),
            threading.Thread(target=call, args=(older, "older")),
        ]
        for count, waiter in enumerate(waiters, 1):
            waiter.start()
            wait_for(lambda count=count: len(slots.waiting) == count, timeout=5, what="the call to wait")
    for waiter in waiters:
        waiter.join(timeout=5)
    assert taken == ["older", "newer"]  # though the newer chunk's call asked first
