"""Benchmark of the job engine, on a fresh SQLite file and a fresh PostgreSQL database.

    python -m tests.bench.engine [--items 100000] [--big 1000000] [--naive 2000] [--users 10000]

Prints, side by side with the targets of the job-engine issue and the floors in DESIGN.md:
  - engine throughput with a no-op extractor over `--items` items, real qcluster, 2 workers
  - the naive design (one django-q2 task per user) over `--naive` users, same cluster, and the ratio
  - rules extraction end to end over `--users` sample users (users/s), real qcluster, 2 workers
  - job creation for `--big` items (s)
  - progress query latency (p50/p95 ms) polled while jobs of `--items` and `--big` items run
  - worker peak memory (RSS) draining a job of 10,000 items and one of `--big` items
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.bench.common import ROOT, backend_urls, child_env, parse_figures, print_table, qcluster, report

EXTRACTORS = "noop=tests.extractors.NoopExtractor"
CLUSTER_ENV = {"Q_WORKERS": "2", "EXTRACTION_EXTRA_EXTRACTORS": EXTRACTORS}


def naive_extract_one(item_id: int) -> None:
    """The naive design's task: one user per django-q2 task (load, extract, save, mark done)."""
    from django.db import transaction
    from django.utils import timezone

    from extraction.extractors import make_extractor
    from extraction.services import chunk_extract, extraction_results_save
    from jobs.models import JobItem

    item = JobItem.objects.select_related("job").get(id=item_id)
    extractor = make_extractor(item.job.extractor, item.job.options)
    outcomes = chunk_extract(user_ids=[item.user_id], extractor=extractor)
    with transaction.atomic():
        extraction_results_save(outcomes=outcomes, extractor=extractor)
        JobItem.objects.filter(id=item_id).update(status="succeeded", finished_at=timezone.now())


class Runner:
    """All steps for one backend, inside a child process whose DATABASE_URL points at it."""

    def __init__(self, url: str, options):
        import django

        django.setup()
        self.url, self.options = url, options

    # plumbing ---------------------------------------------------------------------------------
    def cluster(self):
        return qcluster(child_env(self.url, **CLUSTER_ENV))

    def profiles(self, prefix: str, count: int) -> list[str]:
        """`count` users with a profile and no behaviours (the no-op extractor needs nothing more)."""
        from extraction.services import profiles_upsert

        ids = [f"{prefix}{i:07d}" for i in range(count)]
        for start in range(0, count, 50_000):
            profiles_upsert({user_id: {} for user_id in ids[start : start + 50_000]})
        return ids

    def watch(self, job, *, poll: float = 0.05) -> list[float]:
        """Poll the job's progress until it finishes; return each poll's latency in ms."""
        from jobs.models import Job
        from jobs.selectors import job_progress

        latencies = []
        while True:
            job.refresh_from_db()
            start = time.perf_counter()
            job_progress(job)
            latencies.append((time.perf_counter() - start) * 1000)
            if job.status in Job.FINISHED:
                return latencies
            time.sleep(poll)

    def on_cluster(self, job) -> tuple[float, list[float]]:
        """Run a job on a fresh 2-worker qcluster; returns (items per second, progress latencies)."""
        from jobs.services import job_ring

        with self.cluster():
            job_ring(job.id, tasks=4)
            latencies = self.watch(job)
        if job.status != "completed":
            raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
        return job.total_items / (job.finished_at - job.started_at).total_seconds(), latencies

    def drained_by_processes(self, job, processes: int = 2) -> tuple[float, float]:
        """Drain a job with plain worker processes; returns (items/s, peak RSS of a worker in MB)."""
        start = time.perf_counter()
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.bench.engine", "--drain", str(job.id)],
                cwd=ROOT,
                env=child_env(self.url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        peaks = [parse_figures(worker.communicate()[0])["peak_rss_mb"] for worker in workers]
        return job.total_items / (time.perf_counter() - start), max(peaks)

    # steps ---------------------------------------------------------------------------------------
    def run(self) -> None:
        from django.core.management import call_command

        from eventproject.db import tables_analyze
        from extraction.models import UserProfile
        from jobs.models import JobItem
        from jobs.services import job_start

        options = self.options
        call_command("migrate", verbosity=0)

        # Job creation for a big job, then its progress while two workers drain it, and their memory.
        self.profiles("big", options.big)
        tables_analyze(UserProfile)
        start = time.perf_counter()
        big = job_start(extractor="noop", enqueue=False)
        report("create_big_s", time.perf_counter() - start)
        assert big.total_items == options.big
        tables_analyze(JobItem)
        with ThreadPoolExecutor(1) as pool:  # the workers run in processes; this thread only waits
            drained = pool.submit(self.drained_by_processes, big)
            time.sleep(1)
            latencies = self.watch(big, poll=0.1)
            rate, peak = drained.result()
        report("progress_big_p50_ms", statistics.median(latencies))
        report("progress_big_p95_ms", statistics.quantiles(latencies, n=20)[-1])
        report("rss_big_mb", peak)
        report("drain_big_items_per_s", rate)

        small = job_start(user_ids=self.profiles("small", 10_000), extractor="noop", enqueue=False)
        report("rss_small_mb", self.drained_by_processes(small)[1])

        # No-op throughput on a real cluster, with progress polled throughout.
        job = job_start(user_ids=self.profiles("noop", options.items), extractor="noop", enqueue=False)
        rate, latencies = self.on_cluster(job)
        report("noop_items_per_s", rate)
        report("progress_items_p50_ms", statistics.median(latencies))
        report("progress_items_p95_ms", statistics.quantiles(latencies, n=20)[-1])

        # The naive design: one task per user, same cluster.
        from django_q.tasks import async_task

        job = job_start(user_ids=self.profiles("naive", options.naive), extractor="noop", enqueue=False)
        with self.cluster():
            start = time.perf_counter()
            for item_id in job.items.values_list("id", flat=True):
                async_task("tests.bench.engine.naive_extract_one", item_id)
            while job.items.filter(status="succeeded").count() < options.naive:
                time.sleep(0.2)
            report("naive_items_per_s", options.naive / (time.perf_counter() - start))

        # Rules extraction end to end on sample journeys.
        call_command("generate_sample_data", users=options.users, prefix="s", verbosity=0)
        job = job_start(user_ids=[f"s{i:07d}" for i in range(1, options.users + 1)], enqueue=False)
        report("rules_users_per_s", self.on_cluster(job)[0])


def drain(job_id: int) -> None:
    import django

    django.setup()
    from jobs.engine import job_drain

    job_drain(job_id, budget_seconds=float("inf"))
    report("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child: the database URL
    parser.add_argument("--drain", type=int, help=argparse.SUPPRESS)  # worker: the job id
    options = parser.parse_args()
    if options.drain:
        return drain(options.drain)
    if options.run:
        return Runner(options.run, options).run()

    backends = options.backends.split(",")
    results = {}
    for backend, url in backend_urls("bench_engine", backends).items():
        print(f"[{backend}] running …", file=sys.stderr)
        args = [f"--{name}={getattr(options, name)}" for name in ("items", "big", "naive", "users")]
        process = subprocess.run(
            [sys.executable, "-m", "tests.bench.engine", "--run", url, *args],
            cwd=ROOT,
            env=child_env(url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        results[backend] = parse_figures(process.stdout)

    def row(label, fmt, key, baseline):
        return (label, baseline, {b: fmt.format(results[b][key]) for b in backends})

    for figures in results.values():
        figures["ratio"] = figures["noop_items_per_s"] / figures["naive_items_per_s"]
    n, big = f"{options.items:,}", f"{options.big:,}"
    print_table(
        "Job engine benchmark",
        "2-core machine; real `manage.py qcluster` with 2 workers (ORM broker) unless noted; default chunk "
        "size; no-op extractor = profiles without behaviours, no events written.",
        [
            row(
                f"no-op engine, {n} items, items/s",
                "{:,.0f}",
                "noop_items_per_s",
                "target ≥ 10,000 on PostgreSQL; raw claim+done floor: chunk 100 ≈ 27,000",
            ),
            row(
                f"naive: one task per user ({options.naive:,}), items/s",
                "{:,.0f}",
                "naive_items_per_s",
                "DESIGN: ≈ 115 tasks/s (PostgreSQL, ORM broker)",
            ),
            row("engine / naive", "{:,.0f}×", "ratio", "target ≥ 50×"),
            row(
                f"rules extraction end to end, {options.users:,} sample users, users/s",
                "{:,.0f}",
                "rules_users_per_s",
                "-",
            ),
            row(f"job creation, {big} items, s", "{:.1f}", "create_big_s", "target: seconds, not minutes"),
            row(f"progress query p50 at {n} items, ms", "{:.1f}", "progress_items_p50_ms", "-"),
            row(f"progress query p95 at {n} items, ms", "{:.1f}", "progress_items_p95_ms", "target ≤ 20"),
            row(f"progress query p50 at {big} items, ms", "{:.1f}", "progress_big_p50_ms", "-"),
            row(
                f"progress query p95 at {big} items, ms",
                "{:.1f}",
                "progress_big_p95_ms",
                "target ≤ 20; GROUP BY count: 110–240",
            ),
            row(
                f"drain {big} items, 2 plain worker processes, items/s",
                "{:,.0f}",
                "drain_big_items_per_s",
                "-",
            ),
            row("worker peak RSS, job of 10,000 items, MB", "{:.0f}", "rss_small_mb", "-"),
            row(f"worker peak RSS, job of {big} items, MB", "{:.0f}", "rss_big_mb", "target: within 30 MB"),
        ],
        backends,
    )


if __name__ == "__main__":
    main()
