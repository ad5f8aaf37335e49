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
    from jobs.models import Job
    from jobs.services import job_start
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
            job = job_start(extractor="llm", options=llm_options, chunk_size=options.chunk_size)
            while job.status not in Job.FINISHED:
                time.sleep(0.5)
                job.refresh_from_db()
        fake = server.fake
    if os.environ.get("BENCH_TIMELINE"):
        start = min(a for a, _ in fake.spans)
        for t in range(int((max(b for _, b in fake.spans) - start) * 4) + 1):
            moment = start + t / 4
            busy = sum(1 for a, b in fake.spans if a <= moment < b)
            print(f"{t / 4:5.2f} s {'#' * busy}", file=sys.stderr)
    if job.status != "completed":
        raise SystemExit(f"job ended {job.status}: {job.error}")
    seconds = (job.finished_at - job.started_at).total_seconds()
    calls = len(fake.requests)
    slots = options.workers * options.concurrency
    ideal = calls * options.latency / slots

    def row(label, text, baseline):
        return (label, baseline, {"postgresql": text})

    print_table(
        "LLM extractor against the fake server",
        f"PostgreSQL; {options.users:,} sample users ({behaviors:,} behaviours); fake server latency "
        f"{options.latency * 1000:.0f} ms; qcluster {options.workers} workers × max_concurrency "
        f"{options.concurrency}; token_budget {options.token_budget:,}; chunk size {job.chunk_size}; "
        f"one 2-core machine.",
        [
            row("users/s", f"{options.users / seconds:,.1f}", "-"),
            row("run time, s", f"{seconds:.1f}", f"ideal bound {ideal:.1f} s"),
            row(
                "efficiency (ideal / run time)", f"{ideal / seconds:.0%}", f"target ≥ {TARGET_EFFICIENCY:.0%}"
            ),
            row("calls made", f"{calls:,}", f"minimum the budgets allow: {minimum:,}"),
            row("calls over the minimum", f"{calls / minimum - 1:.1%}", f"target ≤ {TARGET_EXTRA_CALLS:.0%}"),
            row("most calls in flight", f"{fake.max_in_flight}", f"slots: {slots}"),
            row(
                "mean time a call spent in the server, ms",
                f"{1000 * fake.busy_seconds / calls:.0f}",
                f"latency {options.latency * 1000:.0f}",
            ),
            row("mean calls in flight", f"{fake.busy_seconds / seconds:.1f}", f"slots: {slots}"),
            row("succeeded / failed", f"{job.succeeded_items:,} / {job.failed_items:,}", "-"),
            row("tokens (prompt / completion)", f"{job.prompt_tokens:,} / {job.completion_tokens:,}", "-"),
        ],
        ["postgresql"],
    )


if __name__ == "__main__":
    main()
