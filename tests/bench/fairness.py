"""Benchmark of many jobs at once: the workers' fair share and the LLM provider's budget.

    python -m tests.bench.fairness [--quick] [--big 100000] [--pair 50000] [--gap 10]

On a fresh PostgreSQL database with a real qcluster of 2 workers. The rate figures use the test
extractor taking `--seconds-per-user` (a fixed cost per user, as a real extractor has, so the
figures measure the share the scheduler gives, not the machine's other load; 0: the no-op
extractor):

  - a 5-user job alone, then started while a `--big`-user job runs: how long it takes (created to
    finished), against 3 × alone + 5 s;
  - two equal `--pair`-user jobs started `--gap` seconds apart: their rates while both run (within
    ±20 % of each other), and the two together against the first one alone (≥ 90 %);
  - a high and a normal job started together: their rates while both run (≥ 2 ×).

Then the LLM extractor against the test server, which enforces `--tpm` tokens per minute with 429s
and Retry-After, the cluster's budget set to the same, a normal and a high job sharing it (a
worker each, so that the budget alone divides their calls): the
tokens answered per minute (≥ 90 % of the limit, measured after the first `--warmup` seconds),
how the two jobs divided them, and the share of calls refused (≤ 2 %).
`--quick` scales the sizes and durations down.
"""

import os
import time

from tests.bench.common import arguments, backend_urls, child_env, cluster_wait_alive, print_table, qcluster

EXTRACTORS = "test=tests.extractors.ScriptedExtractor,noop=tests.extractors.NoopExtractor"
WORKERS = 2
TARGET_SMALL_FACTOR, TARGET_SMALL_PLUS = 3, 5.0
TARGET_EQUAL = 0.20
TARGET_HIGH = 2.0
TARGET_TOTAL = 0.90
TARGET_TPM = 0.90
TARGET_REFUSED = 0.02


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller jobs, shorter runs")
    parser.add_argument("--big", type=int, help="users of the big job (100,000; quick 20,000)")
    parser.add_argument("--pair", type=int, help="users of each of two jobs (50,000; quick 10,000)")
    parser.add_argument("--gap", type=float, help="seconds between the two equal jobs (10; quick 3)")
    parser.add_argument("--seconds-per-user", type=float, default=0.001)
    parser.add_argument("--tpm", type=int, default=600_000, help="the LLM endpoint's tokens per minute")
    parser.add_argument("--llm-seconds", type=float, help="how long the LLM job runs (90; quick 40)")
    parser.add_argument("--warmup", type=float, default=10.0)
    options = parser.parse_args()
    quick = options.quick
    options.big = options.big or (20_000 if quick else 100_000)
    options.pair = options.pair or (10_000 if quick else 50_000)
    options.gap = options.gap if options.gap is not None else (3.0 if quick else 10.0)
    options.llm_seconds = options.llm_seconds or (40.0 if quick else 90.0)

    url = backend_urls("bench_fairness", ["postgresql"])["postgresql"]
    os.environ.update(child_env(url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    bench = Bench(options)
    with qcluster(child_env(url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS, Q_WORKERS=str(WORKERS))) as cluster:
        cluster_wait_alive(cluster)
        figures = bench.shares()
    figures.update(bench.llm(url))
    bench.print(figures)


class Bench:
    def __init__(self, options):
        self.options = options
        self.made = 0

    # Jobs ------------------------------------------------------------------------------------------
    def users(self, count: int) -> list[str]:
        """`count` new users with a profile and no behaviours."""
        from extraction.services import profiles_upsert

        ids = [f"f{self.made + i:07d}" for i in range(count)]
        self.made += count
        for start in range(0, count, 50_000):
            profiles_upsert({user_id: {} for user_id in ids[start : start + 50_000]})
        return ids

    def start(self, count: int, priority=None):
        from jobs.models import Job
        from jobs.services import job_start

        seconds = self.options.seconds_per_user
        extractor, options = ("test", {"seconds_per_user": seconds}) if seconds else ("noop", {})
        return job_start(
            user_ids=self.users(count),
            extractor=extractor,
            options=options,
            priority=priority or Job.Priority.NORMAL,
        )

    @staticmethod
    def finished(*jobs, timeout: float = 3600):
        deadline = time.monotonic() + timeout
        for job in jobs:
            while True:
                job.refresh_from_db()
                if job.status in job.FINISHED:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job.id} did not finish within {timeout} s")
                time.sleep(0.1)

    @staticmethod
    def running(job, done: int = 1):
        """Wait until the job has finished `done` users."""
        while True:
            job.refresh_from_db()
            if job.succeeded_items + job.failed_items >= done or job.status in job.FINISHED:
                return
            time.sleep(0.05)

    @staticmethod
    def rate(job, since, until) -> float:
        """The job's users finished per second between two of the database's times."""
        count = job.items.filter(finished_at__gte=since, finished_at__lt=until).count()
        return count / max((until - since).total_seconds(), 1e-3)

    @staticmethod
    def took(job) -> float:
        return (job.finished_at - job.created_at).total_seconds()

    def shares(self) -> dict[str, float]:
        from jobs.models import Job
        from jobs.services import job_cancel

        options, figures = self.options, {}
        small = self.start(5)
        self.finished(small)
        figures["small_alone_s"] = self.took(small)

        big = self.start(options.big)
        self.running(big, done=options.big // 20)
        small = self.start(5)
        self.finished(small)
        figures["small_beside_big_s"] = self.took(small)
        job_cancel(big)
        self.finished(big)

        first = self.start(options.pair)
        time.sleep(options.gap)
        second = self.start(options.pair)
        self.finished(first, second)
        since, until = second.started_at, min(first.finished_at, second.finished_at)
        one, two = self.rate(first, since, until), self.rate(second, since, until)
        figures["equal_first_per_s"], figures["equal_second_per_s"] = one, two
        figures["equal_difference"] = abs(one - two) / max(one, two)
        alone = self.rate(first, first.started_at, second.started_at)
        figures["alone_per_s"], figures["together_per_s"] = alone, one + two
        figures["together_vs_alone"] = (one + two) / alone

        high = self.start(options.pair, Job.Priority.HIGH)
        normal = self.start(options.pair, Job.Priority.NORMAL)
        self.finished(high, normal)
        since = max(high.started_at, normal.started_at)
        until = min(high.finished_at, normal.finished_at)
        figures["high_per_s"], figures["normal_per_s"] = (
            self.rate(high, since, until),
            self.rate(normal, since, until),
        )
        figures["high_vs_normal"] = figures["high_per_s"] / figures["normal_per_s"]
        return figures

    # The LLM provider's budget ---------------------------------------------------------------------
    def llm(self, url: str) -> dict[str, float]:
        from django.core.management import call_command

        from extraction.models import UserProfile
        from jobs.models import Job
        from jobs.services import job_cancel, job_start
        from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

        options = self.options
        call_command("generate_sample_data", users=1_500 if options.quick else 4_000, prefix="s", verbosity=0)
        ids = list(UserProfile.objects.filter(user_id__startswith="s").values_list("user_id", flat=True))
        with FakeOpenAIServer() as server:
            fake = server.fake
            fake.latency = 0.2
            fake.limit(tokens_per_minute=options.tpm)
            env = child_env(
                url,
                EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS,
                Q_WORKERS=str(WORKERS),
                OPENAI_BASE_URL=server.base_url,
                OPENAI_API_KEY=API_KEY,
                EXTRACTION_LLM_MODEL=MODEL,
                EXTRACTION_LLM_TOKENS_PER_MINUTE=str(options.tpm),
            )
            with qcluster(env) as cluster:
                cluster_wait_alive(cluster)
                half = len(ids) // 2
                jobs = [
                    job_start(
                        user_ids=ids[:half] if priority == Job.Priority.NORMAL else ids[half:],
                        extractor="llm",
                        options={"model": MODEL, "token_budget": 3_000, "max_completion_tokens": 2_000},
                        chunk_size=20,
                        priority=priority,
                        max_workers=1,  # a worker each: the budget alone divides the calls
                    )
                    for priority in (Job.Priority.NORMAL, Job.Priority.HIGH)
                ]
                deadline = time.monotonic() + options.llm_seconds
                while time.monotonic() < deadline and any(job.status not in Job.FINISHED for job in jobs):
                    time.sleep(0.5)
                    for job in jobs:
                        job.refresh_from_db()
                for job in jobs:
                    if job.status in Job.WORKING:
                        job_cancel(job)
                self.finished(*jobs, timeout=120)
            if failed := [job for job in jobs if job.status == Job.Status.FAILED]:
                raise SystemExit(f"the LLM job failed: {failed[0].error}")
            requests = list(fake.requests)
        answered = [r for r in requests if r.get("status") == 200]
        start = min(r["at"] for r in requests) + options.warmup
        end = max(r["at"] for r in answered)
        window = [r for r in answered if start <= r["at"] <= end]
        tokens = sum(r["usage"]["total_tokens"] for r in window)
        high_users = set(ids[half:])
        high = sum(r["usage"]["total_tokens"] for r in window if r["users"] and r["users"][0] in high_users)
        return {
            "tpm": tokens / (end - start) * 60,
            "llm_high_tpm": high / (end - start) * 60,
            "llm_normal_tpm": (tokens - high) / (end - start) * 60,
            "calls": len(requests),
            "refused": sum(r.get("status") == 429 for r in requests),
            "llm_window_s": end - start,
        }

    # The table -------------------------------------------------------------------------------------
    def print(self, f: dict[str, float]) -> None:
        o = self.options

        def row(label, text, target):
            return (label, target, {"postgresql": text})

        small_target = TARGET_SMALL_FACTOR * f["small_alone_s"] + TARGET_SMALL_PLUS
        extractor = (
            f"test extractor, {o.seconds_per_user * 1000:g} ms a user" if o.seconds_per_user else "no-op"
        )
        print_table(
            "Many jobs at once: the workers' fair share and the LLM provider's budget",
            f"PostgreSQL; qcluster {WORKERS} workers; {extractor}; big job {o.big:,} users, pairs "
            f"{o.pair:,} users each, {o.gap:g} s apart; LLM: the test server enforcing {o.tpm:,} tokens "
            f"per minute (latency 200 ms), the budget set to the same, measured over "
            f"{f['llm_window_s']:.0f} s after {o.warmup:g} s; one 2-core machine shared with other work.",
            [
                row("5-user job alone, s", f"{f['small_alone_s']:.2f}", "-"),
                row(
                    f"5-user job beside the {o.big:,}-user job, s",
                    f"{f['small_beside_big_s']:.2f}",
                    f"target ≤ 3 × alone + 5 s = {small_target:.1f}",
                ),
                row(
                    "two equal jobs while both run, users/s",
                    f"{f['equal_first_per_s']:,.0f} / {f['equal_second_per_s']:,.0f}",
                    "-",
                ),
                row("  their difference", f"{f['equal_difference']:.1%}", f"target ≤ {TARGET_EQUAL:.0%}"),
                row(
                    "both together against the first alone, users/s",
                    f"{f['together_per_s']:,.0f} / {f['alone_per_s']:,.0f} = {f['together_vs_alone']:.0%}",
                    f"target ≥ {TARGET_TOTAL:.0%}",
                ),
                row(
                    "high beside normal while both run, users/s",
                    f"{f['high_per_s']:,.0f} / {f['normal_per_s']:,.0f} = {f['high_vs_normal']:.2f} ×",
                    f"target ≥ {TARGET_HIGH:g} ×",
                ),
                row(
                    "LLM tokens per minute answered",
                    f"{f['tpm']:,.0f} = {f['tpm'] / o.tpm:.0%} of {o.tpm:,}",
                    f"target ≥ {TARGET_TPM:.0%}",
                ),
                row(
                    "  of them: the high job / the normal job",
                    f"{f['llm_high_tpm']:,.0f} / {f['llm_normal_tpm']:,.0f} = "
                    f"{f['llm_high_tpm'] / max(f['llm_normal_tpm'], 1):.2f} ×",
                    "weights 4 : 2",
                ),
                row(
                    "LLM calls refused with 429",
                    f"{f['refused']:,.0f} of {f['calls']:,.0f} = {f['refused'] / max(f['calls'], 1):.1%}",
                    f"target ≤ {TARGET_REFUSED:.0%}",
                ),
            ],
            ["postgresql"],
        )


if __name__ == "__main__":
    main()
