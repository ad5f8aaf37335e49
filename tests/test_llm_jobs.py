"""LLM extraction as jobs: tokens on items and jobs, fail-fast, the token limit, cancel, estimates,
and a killed cluster resuming without paying twice."""

from collections import Counter

import pytest
from django.core.management import CommandError

from extraction.extractors import Control, ExtractionError, make_extractor
from extraction.models import ExtractedEvent
from extraction.selectors import user_inputs_load
from extraction.services import Outcome
from jobs.models import Job
from jobs.progress import job_progress
from jobs.services import job_cancel, job_counters_reconcile, job_start
from jobs.transitions import job_mark_running
from jobs.worker.claims import chunk_claim
from jobs.worker.commit import chunk_commit
from jobs.worker.drain import job_drain
from tests.cluster import wait_for
from tests.fake_openai import API_KEY, MODEL

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_records_tokens_per_item_and_on_the_job(llm_server, make_users):
    make_users(30, behaviors=6)
    job = job_start(extractor="llm", options={"max_concurrency": 2}, enqueue=False)
    assert job.chunk_size == 200  # the LLM extractor's own default
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 30)
    items = job.items.all()
    assert all(item.prompt_tokens > 0 and item.completion_tokens > 0 for item in items)
    assert job.prompt_tokens == sum(i.prompt_tokens for i in items) > 0
    assert job.completion_tokens == sum(i.completion_tokens for i in items)
    progress = job_progress(job)
    assert (progress.prompt_tokens, progress.completion_tokens) == (
        job.prompt_tokens,
        job.completion_tokens,
    )
    assert (
        ExtractedEvent.objects.filter(extractor="llm", extractor_version=f"1+{MODEL}").count()
        == job.event_count
    )
    assert job_counters_reconcile(job.id) == {}


def test_a_wrong_api_key_fails_the_job_fast_with_a_clear_message(llm_server, make_users, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    make_users(10)
    job = job_start(extractor="llm", chunk_size=5, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("the LLM endpoint rejected the API key (HTTP 401)")
    assert job.cancelled_items == 10
    assert len(llm_server.requests) <= 2  # one per lane (two chunks at once), never retried


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "insufficient_quota"), (402, "insufficient_balance"), (402, None)],  # OpenAI; DeepSeek, others
)
def test_an_account_out_of_credit_fails_the_job_at_once_saying_so(llm_server, make_users, status, code):
    """A 429 insufficient_quota was waited out as a rate limit, doubling up to two minutes, for
    hours; a 402 was refused call by call until fail-fast, over hundreds of requests."""
    make_users(10)
    error = {"message": "Insufficient Balance", "type": "billing", **({"code": code} if code else {})}
    llm_server.bodies.extend([(status, {"error": error})] * 4)
    job = job_start(extractor="llm", chunk_size=5, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert f"says the account's quota or balance is used up (HTTP {status}); add credit" in job.error
    assert len(llm_server.requests) <= 2  # one per lane, never retried


def test_answers_without_usage_count_their_estimate_and_the_token_cap_still_stops_the_job(
    llm_server, make_users, monkeypatch
):
    """Some servers and proxies leave `usage` out: the job counted 0 tokens and its cap never
    stopped it."""
    from tests.fake_openai import FakeLLM

    answer = FakeLLM._answer

    def without_usage(self, headers, body, directive):
        status, extra, payload = answer(self, headers, body, directive)
        payload.pop("usage", None)
        return status, extra, payload

    monkeypatch.setattr(FakeLLM, "_answer", without_usage)
    make_users(30, behaviors=6)
    job = capped_job()
    assert job.status == "failed" and job.error.startswith("token limit reached:")
    assert 0 < job.succeeded_items < 30
    assert job.prompt_tokens + job.completion_tokens >= 1500


def capped_job() -> Job:
    """An LLM job over everyone with a cap of 1,500 tokens (a chunk of 3 costs ~650), drained here."""
    job = job_start(
        extractor="llm", chunk_size=3, enqueue=False, options={"max_concurrency": 1, "max_total_tokens": 1500}
    )
    job_drain(job.id)
    job.refresh_from_db()
    return job


def test_the_token_limit_stops_the_job_with_a_clear_status(llm_server, make_users):
    make_users(30, behaviors=6)
    job = capped_job()
    assert job.status == "failed"
    assert job.error.startswith("token limit reached:") and "of 1,500 tokens spent" in job.error
    # A chunk of 3 costs ~650 tokens: no call starts once 3 chunks are committed, and the two
    # lanes have at most one more in flight then, however fast the server answers.
    assert 0 < job.succeeded_items <= 12
    assert job.succeeded_items + job.cancelled_items == 30
    assert job.prompt_tokens + job.completion_tokens >= 1500
    assert job_counters_reconcile(job.id) == {}


class StopAfter(Control):
    def __init__(self, calls: int, server):
        super().__init__()
        self.calls, self.server = calls, server

    def stopped(self) -> bool:
        return len(self.server.requests) >= self.calls


def test_the_stop_is_checked_before_every_call(llm_server, make_users):
    make_users(20, behaviors=4)
    extractor = make_extractor("llm", {"max_concurrency": 1, "token_budget": 1000})
    inputs = user_inputs_load([f"u{i:03d}" for i in range(1, 21)])
    assert extractor.estimate(inputs)["calls"] > 3
    results = extractor.extract(inputs, StopAfter(2, llm_server))
    assert len(llm_server.requests) == 2
    stopped = [r for r in results.values() if isinstance(r, ExtractionError)]
    assert stopped and all(r.stopped for r in stopped)
    assert sum(isinstance(r, list) for r in results.values()) == len(inputs) - len(stopped)


def test_users_never_sent_go_back_to_pending_or_are_cancelled_with_the_job(llm_server, make_users):
    make_users(4)
    job = job_start(extractor="llm", chunk_size=4, enqueue=False)
    job_mark_running(job.id)
    job.refresh_from_db()
    extractor = make_extractor("llm")
    stop = ExtractionError("the job stopped before this user was sent", stopped=True)
    claim = chunk_claim(job)
    chunk_commit(claim, job, [Outcome(user_id, None, stop) for user_id in claim.user_ids], extractor)
    assert set(job.items.values_list("status", "attempts")) == {("pending", 0)}  # not an attempt
    claim = chunk_claim(job)
    job_cancel(job)
    chunk_commit(claim, job, [Outcome(user_id, None, stop) for user_id in claim.user_ids], extractor)
    job.refresh_from_db()
    assert set(job.items.values_list("status", flat=True)) == {"cancelled"}
    assert job.cancelled_items == 4
    assert job_counters_reconcile(job.id) == {}


def test_estimate_tells_calls_and_tokens_before_starting(llm_server, make_users, run):
    make_users(8, behaviors=10)
    out, _ = run("extract", "--estimate", "--extractor", "llm", "--options", '{"token_budget": 2000}')
    assert out.startswith("estimate for 8 users with extractor llm: ")
    assert "calls, about" in out and "prompt and" in out
    assert not Job.objects.exists() and llm_server.requests == []
    out, _ = run("extract", "--estimate")
    assert "with extractor rules: 0 calls" in out


def test_a_killed_job_resumes_without_repeating_finished_calls(llm_server, make_users, clusters, settings):
    settings.JOBS_LEASE_SECONDS = 2
    make_users(60, behaviors=4)
    llm_server.latency = 0.3
    env = {
        "OPENAI_BASE_URL": llm_server.url,
        "OPENAI_API_KEY": API_KEY,
        "EXTRACTION_LLM_MODEL": MODEL,
        "Q_WORKERS": "1",
        "JOBS_LEASE_SECONDS": "2",
    }
    options = {"max_concurrency": 2, "token_budget": 1200}
    calls = make_extractor("llm", options).estimate(user_inputs_load([f"u{i:03d}" for i in range(1, 61)]))[
        "calls"
    ]
    assert calls >= 10
    first = clusters(**env)
    # 60 users in many calls, two at a time: kill the worker half-way through.
    job = job_start(extractor="llm", chunk_size=60, options=options)
    wait_for(
        lambda: len([r for r in llm_server.requests if r.get("status") == 200]) >= 4,
        timeout=60,
        what="some calls answered",
    )
    first.kill()
    assert Job.objects.get(id=job.id).succeeded_items < 60  # killed before the end
    clusters(**env)
    wait_for(lambda: Job.objects.get(id=job.id).status == "completed", timeout=90, what="the job to finish")
    job.refresh_from_db()
    assert job.succeeded_items == 60
    digests = Counter(r["digest"] for r in llm_server.requests)
    repeated = sum(n - 1 for n in digests.values())
    # Only calls in flight when the worker died (2 at a time) are paid twice; the others came from the cache.
    assert repeated <= 2, digests


def test_a_model_name_longer_than_32_characters_is_recorded_on_every_event(llm_server, make_users):
    model = "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    llm_server.models.add(model)
    make_users(6, behaviors=3)
    job = job_start(extractor="llm", options={"model": model}, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 6)
    assert set(ExtractedEvent.objects.values_list("extractor_version", flat=True)) == {f"1+{model}"}


def test_answers_that_keep_naming_other_users_behaviours_fail_the_job_fast(llm_server, make_users, settings):
    """Each message names other ids, so no two are equal: the streak counts the kind of error."""
    settings.JOBS_FAIL_FAST_AFTER = 5
    make_users(40, behaviors=3)
    llm_server.foreign_ids = True
    job = job_start(
        extractor="llm", chunk_size=4, max_attempts=1, options={"max_concurrency": 4}, enqueue=False
    )
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    # The streak is counted per commit: it passes 5 by as many items as the chunk that crossed it held.
    streak, _, rest = job.error.partition(" items in a row failed")
    assert int(streak) >= 5
    assert rest.startswith(
        " with the same kind of error (the model's answer was unusable); "
        "the last one: the model's answer for this user was unusable: event 0: behaviour ids ["
    )
    assert job.succeeded_items == 0 and job.cancelled_items > 0
    assert job_counters_reconcile(job.id) == {}


def test_a_job_its_token_cap_stopped_resumes_only_with_a_higher_cap(llm_server, make_users, api, run):
    make_users(12, behaviors=6)
    job = capped_job()
    assert job.status == "failed"
    spent = job.prompt_tokens + job.completion_tokens
    refusal = f"stopped at its token cap: {spent:,} of 1,500 tokens spent"

    client = api("operator")
    response = client.post(f"/api/v1/jobs/{job.id}/resume/", {}, format="json")
    assert response.status_code == 409 and refusal in response.json()["detail"]
    response = client.post(f"/api/v1/jobs/{job.id}/resume/", {"max_total_tokens": spent}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "max_total_tokens": [f"must be a whole number above the {spent:,} tokens the job has spent"]
    }
    with pytest.raises(CommandError, match=refusal):
        run("resume_job", str(job.id))

    out, _ = run("resume_job", str(job.id), "--max-total-tokens", "1000000")
    assert out.strip() == f"job {job.id} is queued"
    job.refresh_from_db()
    assert job.options["max_total_tokens"] == 1_000_000
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 12)
    assert job_counters_reconcile(job.id) == {}
