"""Benchmark of the LLM extractor against the fake OpenAI-compatible server of the tests.

    python -m tests.bench.llm [--users 2000] [--latency 0.3] [--concurrency 8] [--workers 2]

On a fresh PostgreSQL database: sample users, a real qcluster with `--workers` workers, and the
fake server answering every call after `--latency` seconds. Reports users/s, the calls made
against the fewest the token budgets allow, the most calls in flight, and the run time against
the ideal bound: total calls × latency ÷ (workers × concurrency). The run time is the job's own,
from the first worker starting it (its extractor made) to the job finishing.
"""

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.bench.common import arguments, backend_urls, child_env, print_table, qcluster

# The LLM extractor's targets since its first version: the run within 85 % of the ideal bound (every
# call slot busy all the time) and at most 10 % more calls than the token and user budgets allow.
TARGET_EFFICIENCY = 0.85
TARGET_EXTRA_CALLS = 0.10


def calls_lower_bound(extractor, users) -> int:
    """The fewest calls the budgets allow for these users (an LLMExtractor's, with its options)."""
    from extraction.extractors.llm_packing import users_parts

    parts, budget = users_parts(users, extractor.budget), extractor.budget
    return max(
        math.ceil(sum(p.tokens for p in parts) / budget.prompt),
        math.ceil(sum(p.expected_completion for p in parts) / budget.completion),
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=12_000)
    parser.add_argument("--chunk-size", type=int, help="default: the LLM extractor's")
    options = parser.parse_args()

    url = backend_urls("bench_llm", ["postgresql"])["postgresql"]
    os.environ.update(child_env(url))
    import django

    django.setup()
    from django.core.management import call_command

    from extraction.extractors import make_extractor
    from extraction.models import UserProfile
    from extraction.selectors import user_inputs_load
    from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

    call_command("migrate", verbosity=0)
    call_command("generate_sample_data", users=options.users, verbosity=0)
    llm_options = {
        "model": MODEL,
        "max_concurrency": options.concurrency,
        "token_budget": options.token_budget,
    }
    ids = list(UserProfile.objects.values_list("user_id", flat=True))
    extractor = make_extractor("llm", llm_options)
    minimum = sum(
        calls_lower_bound(extractor, user_inputs_load(ids[i : i + 500])) for i in range(0, len(ids), 500)
    )
    behaviors = sum(
        len(u.behaviors) for i in range(0, len(ids), 500) for u in user_inputs_load(ids[i : i + 500])
    )

    with FakeOpenAIServer() as server:
        server.fake.latency = options.latency
        env = child_env(
            url,
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY=API_KEY,
            EXTRACTION_LLM_MODEL=MODEL,
            Q_WORKERS=str(options.workers),
        )
        with qcluster(env):
            time.sleep(3)  # let the cluster start before the clock does
            runs = {name: job_run(server.fake, ids, llm_options, options.chunk_size) for name in RUNS}
    if os.environ.get("BENCH_TIMELINE"):
        spans = runs[RUNS[-1]].spans
        start = min(a for a, _ in spans)
        for t in range(int((max(b for _, b in spans) - start) * 4) + 1):
            moment = start + t / 4
            busy = sum(1 for a, b in spans if a <= moment < b)
            print(f"{t / 4:5.2f} s {'#' * busy}", file=sys.stderr)
    slots = options.workers * options.concurrency

    def row(label, text, baseline):
        return (label, baseline, {name: text(run) for name, run in runs.items()})

    def ideal(run: Run) -> float:
        return run.calls * options.latency / slots

    print_table(
        "LLM extractor against the fake server",
        f"PostgreSQL; {options.users:,} sample users ({behaviors:,} behaviours); fake server latency "
        f"{options.latency * 1000:.0f} ms; qcluster {options.workers} workers × max_concurrency "
        f"{options.concurrency}; token_budget {options.token_budget:,}; chunk size "
        f"{runs[RUNS[0]].job.chunk_size}; one 2-core machine. The same job twice on one cluster, the "
        "answer cache emptied before each: the deployment's first job (the endpoint and model new to it: "
        "one call probes what they accept while the others wait; each worker makes its HTTP client), "
        "then the next (as every job after it).",
        [
            row("users/s", lambda run: f"{options.users / run.seconds:,.1f}", "-"),
            row("run time, s", lambda run: f"{run.seconds:.1f} (ideal {ideal(run):.1f})", "-"),
            row(
                "efficiency (ideal / run time)",
                lambda run: f"{ideal(run) / run.seconds:.0%}",
                f"target ≥ {TARGET_EFFICIENCY:.0%} (the next job)",
            ),
            row("calls made", lambda run: f"{run.calls:,}", f"minimum the budgets allow: {minimum:,}"),
            row(
                "calls over the minimum",
                lambda run: f"{run.calls / minimum - 1:.1%}",
                f"target ≤ {TARGET_EXTRA_CALLS:.0%}",
            ),
            row("most calls in flight", lambda run: f"{run.most_in_flight}", f"slots: {slots}"),
            row(
                "mean time a call spent in the server, ms",
                lambda run: f"{1000 * run.busy_seconds / run.calls:.0f}",
                f"latency {options.latency * 1000:.0f}",
            ),
            row(
                "mean calls in flight", lambda run: f"{run.busy_seconds / run.seconds:.1f}", f"slots: {slots}"
            ),
            row(
                "succeeded / failed",
                lambda run: f"{run.job.succeeded_items:,} / {run.job.failed_items:,}",
                "-",
            ),
            row(
                "tokens (prompt / completion)",
                lambda run: f"{run.job.prompt_tokens:,} / {run.job.completion_tokens:,}",
                "-",
            ),
        ],
        RUNS,
    )


RUNS = ("first job", "next job")


@dataclass
class Run:
    """One job's run as the fake server saw it."""

    job: Any
    seconds: float  # the job's own: from a worker starting it to its end
    calls: int
    busy_seconds: float
    most_in_flight: int
    spans: list[tuple[float, float]]


def job_run(fake, user_ids: list[str], llm_options: dict, chunk_size: int | None) -> Run:
    """Start an LLM job over these users, wait for its end, and say what it took. The answer cache
    is emptied first: every call is made again."""
    from extraction.models import LLMCacheEntry
    from jobs.models import Job
    from jobs.services import job_start

    LLMCacheEntry.objects.all().delete()
    fake.requests.clear()
    fake.spans.clear()
    fake.busy_seconds, fake.max_in_flight = 0.0, 0
    job = job_start(user_ids=user_ids, extractor="llm", options=llm_options, chunk_size=chunk_size)
    while job.status not in Job.FINISHED:
        time.sleep(0.5)
        job.refresh_from_db()
    if job.status != "completed":
        raise SystemExit(f"job ended {job.status}: {job.error}")
    seconds = (job.finished_at - job.started_at).total_seconds()
    return Run(job, seconds, len(fake.requests), fake.busy_seconds, fake.max_in_flight, list(fake.spans))


if __name__ == "__main__":
    main()
