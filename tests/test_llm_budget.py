"""The provider's budget (extraction.llm_budget): requests and tokens per minute per endpoint and
model, shared by every worker on every machine, divided among the jobs by weight, paused for
everyone by a 429. The rules are tried on a simulated clock (exact, no waiting); the sharing and
the pause against the test server over HTTP, from threads and from another process."""

import heapq
import itertools
import math
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2
import pytest

from eventproject.db import DatabaseNow
from extraction.llm_budget import BURST_SECONDS, HORIZON_SECONDS, Budget, BudgetState, Limits
from extraction.llm_client import LLMClient
from extraction.llm_http import endpoint, retry_after_seconds
from extraction.models import LLMBudget
from jobs.models import Drain, Job
from jobs.progress import job_progress
from jobs.services import job_share_set
from jobs.worker.control import JobControl, budget_caller
from tests import cluster
from tests.cluster import ROOT, wait_for
from tests.fake_openai import API_KEY, MODEL
from tests.test_settings import settings_error

TPM = Limits(tokens_per_minute=60_000)  # 1,000 tokens a second


def simulate(callers, *, until, limits=TPM, cost=1_000, used=500, call_seconds=0.2):
    """Callers asking the budget on a simulated clock: {name: (weight, threads, joining at)}; each
    thread asks, waits what it is told, sends (a call of `cost` reserved, `used` spent, taking
    `call_seconds`), settles, and asks again. Returns the tokens each spent and when each first sent."""
    state, order, events = BudgetState(), itertools.count(), []
    spent, first_sent = Counter(), {}
    for name, (_weight, threads, joining) in callers.items():
        for _ in range(threads):
            heapq.heappush(events, (joining, next(order), "ask", name, None))
    while events:
        now, _, what, name, asked_at = heapq.heappop(events)
        if now > until:
            break
        if what == "ask":
            admitted, wait = state.ask(name, callers[name][0], cost, now, limits)
            if admitted:
                spent[name] += used
                first_sent.setdefault(name, now + wait)
                heapq.heappush(events, (now + wait + call_seconds, next(order), "settle", name, now))
            else:
                heapq.heappush(events, (now + wait, next(order), "ask", name, None))
        else:
            state.settle(
                name, cost, used, sent=True, answered=True, now=now, limits=limits, asked_at=asked_at
            )
            heapq.heappush(events, (now, next(order), "ask", name, None))
    return spent, first_sent


def test_two_jobs_share_the_budget_by_their_weights_and_spend_no_more_than_it():
    spent, _ = simulate({"normal": (2, 8, 0.0), "high": (4, 8, 0.0)}, until=120)
    assert 1.8 <= spent["high"] / spent["normal"] <= 2.2
    # 1,000 tokens a second for 120 s, and the burst; the calls keep the budget busy.
    room = 1_000 * (120 + BURST_SECONDS + HORIZON_SECONDS)
    assert 0.9 * 120_000 <= spent.total() <= room


def test_weights_hold_when_one_call_costs_seconds_of_the_budget():
    """A call of 8,000 tokens against 1,000 a second: callers are told to wait longer than the
    window in which a caller counts as asking; the least served must still count, or the job with
    more threads wins whatever its weight."""
    spent, _ = simulate({"low": (1, 8, 0.0), "urgent": (8, 1, 0.0)}, until=600, cost=8_000, used=8_000)
    assert spent["urgent"] >= 2 * spent["low"]


def test_jobs_of_equal_weight_share_equally_whatever_their_concurrency():
    spent, _ = simulate({"few": (2, 2, 0.0), "many": (2, 32, 0.0)}, until=120)
    assert 0.9 <= spent["few"] / spent["many"] <= 1.1


def test_a_low_job_beside_an_urgent_one_is_never_starved():
    spent, _ = simulate({"low": (1, 1, 0.0), "urgent": (8, 32, 0.0)}, until=120)
    assert spent["low"] >= 0.5 * spent.total() / 9  # at least half of its ninth


def test_a_job_joining_a_busy_budget_is_served_within_the_reservations_ahead_and_gets_its_share():
    spent, first_sent = simulate({"big": (2, 16, 0.0), "late": (2, 4, 60.0)}, until=120)
    assert first_sent["late"] <= 60.0 + HORIZON_SECONDS + BURST_SECONDS + 1.0  # a start or two beyond
    late, _ = simulate({"big": (2, 16, 0.0), "late": (2, 4, 60.0)}, until=60.0)
    assert "late" not in late
    # From its start on it has about half (the big job had it all before).
    big_after = spent["big"] - late["big"]
    assert 0.8 <= spent["late"] / big_after <= 1.2


def test_a_caller_alone_is_never_held_for_fairness():
    state = BudgetState()
    for now in range(100):
        state.ask("alone", 1, 1_000, float(now), TPM)
        assert not state.ahead("alone", float(now))


def test_a_429_with_retry_after_pauses_every_caller_until_then():
    state = BudgetState()
    assert state.ask("job:1", 2, 100, 100.0, TPM) == (True, 0.0)
    state.pause(3.0, now=100.5)
    assert state.ask("job:1", 2, 100, 101.0, TPM) == (False, 2.5)
    assert state.ask("job:2", 8, 100, 102.0, TPM) == (False, 1.5)  # whatever its weight
    assert state.ask("job:2", 8, 100, 103.5, TPM)[0]


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # OpenAI's and Azure's, to the millisecond
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "soon"}, 0.0),
        ({"Retry-After": "inf", "retry-after-ms": "-5"}, 0.0),
        ({}, 0.0),
    ],
)
def test_a_429s_wait_is_read_from_retry_after_ms_or_retry_after(headers, seconds):
    assert retry_after_seconds(httpx2.Response(429, headers=headers)) == seconds


def test_a_retry_after_given_as_a_date_is_the_time_until_then():
    then = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 < retry_after_seconds(httpx2.Response(429, headers={"Retry-After": then})) <= 30


def test_a_429_without_retry_after_pauses_for_a_doubling_time_until_a_call_is_answered(settings):
    settings.EXTRACTION_LLM_BACKOFF_SECONDS = 1.0
    state = BudgetState()
    state.pause(0, now=10.0)
    assert state.paused_until == 11.0
    state.pause(0, now=10.5)  # refused too, but sent before the pause: no longer
    assert state.paused_until == 11.0
    state.pause(0, now=11.0)
    state.pause(0, now=13.0)
    assert state.paused_until == 17.0  # 1, 2, then 4 s
    state.settle("job:1", 100, 80, sent=True, answered=True, now=17.0, limits=TPM)
    state.pause(0, now=20.0)
    assert state.paused_until == 21.0  # answered since: from the start again


def test_what_a_reservation_did_not_use_goes_back():
    state = BudgetState()
    assert state.ask("job:1", 2, 3_000, 0.0, TPM) == (True, 0.0)  # 3 s of tokens
    assert state.ask("job:1", 2, 1_000, 0.0, TPM) == (True, 2.0)  # starts when 1 s is left of them
    assert state.ask("job:1", 2, 1_000, 0.0, TPM) == (False, 1.0)  # 3 s ahead: not reserved yet
    state.settle("job:1", 3_000, 1_000, sent=True, answered=True, now=0.5, limits=TPM)
    assert state.tokens_at == 4.0 - 2.0
    state.settle("job:1", 1_000, 0, sent=False, answered=False, now=0.5, limits=TPM)  # never sent
    assert state.tokens_at == 1.0


def test_what_goes_back_is_what_is_left_of_the_reservation_after_decaying_with_the_use():
    """A reservation's tokens joined the caller's use when it asked and decay with it: giving back
    the whole unused part after others' asks moved the use on would give back more than is left."""
    state = BudgetState()
    state.ask("job:1", 1, 3_000, 0.0, TPM)
    state.ask("job:2", 1, 1_000, 20.0, TPM)  # the use of all decayed to 20 s: job:1's is 3,000 / e
    state.settle("job:1", 3_000, 1_000, sent=True, answered=True, now=20.0, limits=TPM, asked_at=0.0)
    assert state.callers["job:1"]["usage"] == pytest.approx(1_000 / math.e)  # as if 1,000 was asked


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXTRACTION_LLM_TOKENS_PER_MINUTE": "lots"}, "EXTRACTION_LLM_TOKENS_PER_MINUTE must be an integer"),
        ({"EXTRACTION_LLM_TOKENS_PER_MINUTE": "-1"}, "EXTRACTION_LLM_TOKENS_PER_MINUTE must be at least 0"),
        (
            {"EXTRACTION_LLM_TOKENS_PER_MINUTE": "500"},
            "EXTRACTION_LLM_TOKENS_PER_MINUTE must be 0 (no limit) or at least 1000, got 500",
        ),
        (
            {"EXTRACTION_LLM_REQUESTS_PER_MINUTE": "1.5"},
            "EXTRACTION_LLM_REQUESTS_PER_MINUTE must be an integer",
        ),
    ],
)
def test_bad_budget_settings_are_refused_by_name(env, message):
    code, stderr = settings_error(DEBUG="1", **env)
    assert code != 0 and message in stderr


# Over HTTP: the test server enforces the provider's limits with 429s ---------------------------------
MESSAGES = [{"role": "user", "content": "hi"}]


def client() -> LLMClient:
    return LLMClient(model=MODEL, temperature=0.0, timeout=10.0, max_completion_tokens=100)


@pytest.mark.django_db(transaction=True)
def test_a_429_pauses_every_caller_of_the_endpoint_and_model(llm_server):
    llm_server.script.append("429")
    llm_server.retry_after = "2"
    first = threading.Thread(target=lambda: client().complete(MESSAGES, share=lambda: ("job:1", 2)))
    first.start()
    wait_for(lambda: LLMBudget.objects.filter(paused_until__gt=0).exists(), timeout=10, what="the pause")
    client().complete(MESSAGES, share=lambda: ("job:2", 8))  # another job, asking after the 429
    first.join(timeout=10)
    refused, *later = llm_server.requests
    assert refused["status"] == 429 and [r["status"] for r in later] == [200, 200]
    assert all(r["at"] >= refused["at"] + 2.0 - 0.05 for r in later)  # (clocks: the database's, ours)


@pytest.mark.django_db(transaction=True)
def test_the_budget_is_shared_by_workers_in_two_processes(llm_server, settings):
    """Each process alone would send 20 requests a second, twice what the server allows: shared, they
    keep under it together and the server refuses none."""
    llm_server.limit(requests_per_minute=1_200, burst_seconds=BURST_SECONDS + 1.0)
    settings.EXTRACTION_LLM_REQUESTS_PER_MINUTE = 1_200
    calls = 15  # per thread, 4 threads in each process: 120 requests, 6 s at 20 a second
    script = (
        "import threading\n"
        "from extraction.llm_client import LLMClient\n"
        "def run():\n"
        f"    c = LLMClient(model={MODEL!r}, temperature=0.0, timeout=10.0, max_completion_tokens=100)\n"
        f"    for _ in range({calls}):\n"
        f"        c.complete({MESSAGES!r}, share=lambda: ('job:2', 2))\n"
        "threads = [threading.Thread(target=run) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
    )
    env = {
        "DATABASE_URL": cluster.test_database_url(),
        "DEBUG": "1",
        "OPENAI_BASE_URL": llm_server.url,
        "OPENAI_API_KEY": API_KEY,
        "EXTRACTION_LLM_MODEL": MODEL,
        "EXTRACTION_LLM_REQUESTS_PER_MINUTE": "1200",
        "PATH": "/usr/bin:/bin",
    }
    other = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env)
    try:

        def run():
            mine = client()
            for _ in range(calls):
                mine.complete(MESSAGES, share=lambda: ("job:1", 2))

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert other.wait(timeout=120) == 0
    finally:
        other.kill()
    statuses = Counter(request["status"] for request in llm_server.requests)
    assert statuses == {200: 8 * calls}


@pytest.mark.django_db(transaction=True)
def test_progress_says_a_job_is_held_back_by_the_providers_limit_while_its_calls_wait(
    llm_server, running_job, make_users
):
    job = running_job(make_users(2), start={"extractor": "llm"})
    Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow())
    assert job_progress(job).waiting_for is None
    budget = Budget(endpoint().shown, MODEL)
    budget.pause(30.0)  # a 429 asked for half a minute
    assert budget.ask(budget_caller(job.id), 2, 100)[0] is False
    progress = job_progress(job)
    assert (progress.waiting_for, progress.activity) == (
        "provider_limit",
        "held back by the provider's limit",
    )
    LLMBudget.objects.update(paused_until=0, callers={})  # the pause is over, its calls went out
    assert job_progress(job).waiting_for is None


@pytest.mark.django_db
def test_a_jobs_weight_in_the_budget_is_its_priority_read_again_while_it_runs(running_job, make_users):
    job = running_job(make_users(1))
    control = JobControl(job.id)
    assert control.budget_share() == (f"job:{job.id}", Job.Priority.NORMAL)
    job_share_set(job, priority=Job.Priority.URGENT)
    control.checked_at -= 1.0  # a second later: the job's row is read again
    assert control.budget_share() == (f"job:{job.id}", Job.Priority.URGENT)
