"""Benchmark of the job engine against its limits, every figure on one clock in one run.

    python -m tests.bench.engine [--items 100000] [--naive 2000] [--users 10000] [--backends ...]

Each backend gets a fresh database. Three ways of finishing `--items` no-op items are timed the same
way: from the moment the work is handed to processes that are already up (a `go` line to the raw
workers; the bell rung for a cluster whose heartbeat says it is up; 2,000 tasks enqueued to it) to the
moment the parent sees the last item done. On PostgreSQL:

  - the raw floor: 2 plain processes, each claiming `chunk` pending items above its last id with
    FOR UPDATE SKIP LOCKED and marking them done, two transactions per chunk, nothing else;
  - the engine: a real `manage.py qcluster` with 2 workers, the job's default chunk size;
  - the naive design: one django-q2 task per user, same cluster;

the floor and the engine in turns, three times (each figure the median: one run of either varies
by a third from run to run on this machine);

then the rules extractor end to end on sample journeys on the same cluster, where a rules chunk's time
goes (one worker process, timed by phase), how many statements a no-op chunk sends, and the progress
query's latency while the no-op job runs.
"""

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

from tests.bench.common import (
    ROOT,
    arguments,
    backend_urls,
    child_env,
    cluster_wait_alive,
    parse_figures,
    print_table,
    process_stop,
    qcluster,
    report,
)

EXTRACTORS = "noop=tests.extractors.NoopExtractor"
CLUSTER_ENV = {"Q_WORKERS": "2", "EXTRACTION_EXTRA_EXTRACTORS": EXTRACTORS}
WORKERS = 2
RUNS = 3  # turns of the raw floor and the no-op engine (see Runner.run)

# Where the figures stood before the third round, on this 2-core machine (PostgreSQL, 2 workers,
# `--items 100000 --naive 500 --users 2000`, the machine running other work too): raw floor 36,413
# items/s, engine 9,260 (0.25 × the floor; 18,035 = 0.33 × on a quiet machine), 7.1 statements per
# no-op chunk, rules end to end 736 users/s on 2,000 users (901 on 10,000, quiet); one task per
# user about 42 tasks/s acknowledged.
BASELINE_NOOP = "9,260 (round two; 18,035 quiet)"
BASELINE_FLOOR = "36,413 (round two, same bench)"
BASELINE_NAIVE = "≈ 42 (round two)"
BASELINE_RULES = "736 (2,000 users) / 901 (10,000), round two"
BASELINE_STATEMENTS = "7.1 (round two)"
# The targets of the third round of performance work.
TARGET_ENGINE_VS_FLOOR = 0.5  # the engine within a factor two of the floor measured in the same run
TARGET_NOOP = 25_000
TARGET_ENGINE_VS_NAIVE = 50
TARGET_RULES = 1_500
TARGET_STATEMENTS = 3
TARGET_PROGRESS_P95_MS = 20


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


def floor_worker(job_id: int, chunk: int) -> None:
    """One raw worker: claim, mark done, nothing else; starts on a `go` line, reports when it ended."""
    import django

    django.setup()
    from django.db import connection

    from jobs.models import JobItem

    table = JobItem._meta.db_table
    claim = (
        f"UPDATE {table} SET status = 'running' WHERE id IN (SELECT id FROM {table} "
        "WHERE job_id = %s AND status = 'pending' AND id > %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
        "RETURNING id"
    )
    done = f"UPDATE {table} SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)"
    with connection.cursor() as cursor:  # autocommit: each statement is its own transaction
        cursor.execute("SELECT 1")
        print("ready", flush=True)
        sys.stdin.readline()
        after = 0
        while True:
            cursor.execute(claim, [job_id, after, chunk])
            ids = [row[0] for row in cursor.fetchall()]
            if ids:
                cursor.execute(done, [ids])
                after = max(ids)
            elif after:
                after = 0  # once more from the start: rows another worker held may be left
            else:
                break
    report("ended", time.monotonic())


def sample_job(users: int):
    """A rules job over the sample users generate_sample_data made (s0000001…)."""
    from jobs.services import job_start

    return job_start(user_ids=[f"s{i:07d}" for i in range(1, users + 1)], enqueue=False)


def drain_in_process(job) -> int:
    """Drain a job in this process as one drain task would; returns how many chunks it took."""
    from jobs.worker import drain

    chunks = 0

    def counted(*args, **kwargs):
        nonlocal chunks
        done = process_one_chunk(*args, **kwargs)
        chunks += done is not None
        return done

    process_one_chunk, drain.process_one_chunk = drain.process_one_chunk, counted
    try:
        drain.job_drain(job.id, budget_seconds=float("inf"))
    finally:
        drain.process_one_chunk = process_one_chunk
    job.refresh_from_db()
    assert job.status == "completed", f"job {job.id} ended {job.status}: {job.error}"
    return chunks


class Runner:
    """All steps for one backend, inside a child process whose DATABASE_URL points at it."""

    def __init__(self, url: str, options):
        import django

        django.setup()
        self.url, self.options = url, options
        self.start_delays: list[float] = []  # each job on a cluster: its bell to its start, s

    def profiles(self, prefix: str, count: int) -> list[str]:
        """`count` users with a profile and no behaviours (the no-op extractor needs nothing more)."""
        from eventproject.db import tables_analyze
        from extraction.models import UserProfile
        from extraction.services import profiles_upsert

        ids = [f"{prefix}{i:07d}" for i in range(count)]
        for start in range(0, count, 50_000):
            profiles_upsert({user_id: {} for user_id in ids[start : start + 50_000]})
        tables_analyze(UserProfile)
        return ids

    def job(self, prefix: str, count: int):
        """A queued no-op job over `count` new users, its items analysed (a start analyses only big
        ones), so every claim plan sees them as they are."""
        from eventproject.db import tables_analyze
        from jobs.models import JobItem
        from jobs.services import job_start

        job = job_start(user_ids=self.profiles(prefix, count), extractor="noop", enqueue=False)
        tables_analyze(JobItem)
        return job

    @contextmanager
    def cluster(self):
        with qcluster(child_env(self.url, **CLUSTER_ENV)) as cluster:
            cluster_wait_alive(cluster)
            yield cluster

    # The three designs, one clock --------------------------------------------------------------------
    def floor(self, count: int) -> float:
        job = self.job("floor", count)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.engine",
                    "--floor",
                    str(job.id),
                    "--chunk",
                    str(job.chunk_size),
                ],
                cwd=ROOT,
                env=child_env(self.url),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for _ in range(WORKERS)
        ]
        try:
            for worker in workers:  # each one set up and connected, waiting for its line
                assert worker.stdout.readline().strip() == "ready"
            start = time.monotonic()
            for worker in workers:
                worker.stdin.write("go\n")
                worker.stdin.flush()
            ended = max(parse_figures(worker.communicate()[0])["ended"] for worker in workers)
        finally:
            for worker in workers:
                process_stop(worker)
        left = job.items.exclude(status="succeeded").count()
        assert not left, f"the floor left {left} items"
        return count / (ended - start)

    def on_cluster(self, job, *, each_poll=None) -> float:
        """Ring a job for a cluster that is already up and wait for its end: its items per second.
        `each_poll(job)` runs after each look at the job (every 20 ms)."""
        from django.utils import timezone

        from jobs.bells import job_ring

        with self.cluster():
            start, rung_at = time.monotonic(), timezone.now()
            job_ring(job.id, tasks=4)
            while job.status not in job.FINISHED:
                time.sleep(0.02)
                job.refresh_from_db()
                if each_poll:
                    each_poll(job)
            ended = time.monotonic()
        if job.status != "completed":
            raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
        self.start_delays.append((job.started_at - rung_at).total_seconds())
        return job.total_items / (ended - start)

    def engine(self, count: int) -> tuple[float, list[float]]:
        """The engine on no-op items: (items/s, latencies of the progress query polled meanwhile, ms)."""
        from jobs.progress import job_progress

        latencies = []

        def progress_timed(job) -> None:
            started = time.perf_counter()
            job_progress(job)
            latencies.append((time.perf_counter() - started) * 1000)

        return self.on_cluster(self.job("engine", count), each_poll=progress_timed), latencies

    def naive(self, count: int) -> float:
        """One task per user: done when every item is and django-q2 has acknowledged every task (its
        own bookkeeping per task runs behind the work; left undone, the next cluster does it first)."""
        from django_q.models import OrmQ
        from django_q.tasks import async_task

        job = self.job("naive", count)
        items = job.items.all()
        with self.cluster():
            start = time.monotonic()
            for item_id in items.values_list("id", flat=True):
                async_task("tests.bench.engine.naive_extract_one", item_id)
            while items.filter(status="succeeded").count() < count or OrmQ.objects.exists():
                time.sleep(0.02)
            return count / (time.monotonic() - start)

    def rules(self, users: int) -> float:
        """Rules extraction end to end over `users` sample journeys (made here): users/s."""
        from django.core.management import call_command

        call_command("generate_sample_data", users=users, prefix="s", verbosity=0)
        return self.on_cluster(sample_job(users))

    # Where a chunk's time goes, in one worker process ------------------------------------------------
    def statements_per_chunk(self, count: int = 10_000) -> float:
        """Statements a no-op chunk sends on the worker's connection (the lease keeper's heartbeat, a
        statement every few seconds on a connection of its own, is not counted)."""
        from django.db import connection

        job = self.job("statements", count)
        statements = 0

        def count_statement(execute, sql, params, many, context):
            nonlocal statements
            statements += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count_statement):
            chunks = drain_in_process(job)
        return statements / chunks

    def rules_phases(self, users: int) -> dict[str, float]:
        """Milliseconds per chunk in each phase of rules extraction, one worker process draining a job
        of the sample users (made by rules()) again; its garbage collector set as a cluster's workers'
        (the last step: it stays so)."""
        from extraction import services
        from extraction.extractors.rules import RulesExtractor
        from jobs.management.commands.qcluster import collector_tune
        from jobs.worker import chunk, commit

        spent = defaultdict(float)

        def timed(phase, function):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    spent[phase] += time.perf_counter() - start

            return wrapper

        patches = [
            (chunk, "chunk_claim", "claim"),
            (services, "user_inputs_load", "load"),
            (RulesExtractor, "extract", "extract"),
            (commit, "extraction_results_write", "write events"),
            (chunk, "commit_with_retries", "commit"),
        ]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, phase in patches:
            setattr(owner, name, timed(phase, getattr(owner, name)))
        job = sample_job(users)
        collector_tune()
        start = time.perf_counter()
        try:
            chunks = drain_in_process(job)
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        total = time.perf_counter() - start
        spent["commit"] -= spent["write events"]  # the commit's own statements, without the events
        spent["other"] = total - sum(spent.values())
        return {phase: 1000 * seconds / chunks for phase, seconds in spent.items()}

    def run(self) -> None:
        from django.core.management import call_command

        from eventproject.db import is_postgresql

        options = self.options
        call_command("migrate", verbosity=0)
        # The floor and the engine in turns, RUNS times: one run of either varied by a third between
        # runs of the same tree on the same machine (other work, the disk); each is the median, and
        # the ratio the median of each turn's own (the two measured a few seconds apart).
        floors, rates, ratios, latencies = [], [], [], []
        for _ in range(RUNS):
            if is_postgresql():
                floors.append(self.floor(options.items))
            rate, polled = self.engine(options.items)
            rates.append(rate)
            latencies += polled
            if floors:
                ratios.append(rate / floors[-1])
        if floors:
            report("floor_items_per_s", statistics.median(floors))
            report("engine_vs_floor", statistics.median(ratios))
        report("noop_items_per_s", statistics.median(rates))
        report("noop_start_s", statistics.median(self.start_delays))
        report("progress_p50_ms", statistics.median(latencies))
        report("progress_p95_ms", statistics.quantiles(latencies, n=20)[-1])
        report("naive_items_per_s", self.naive(options.naive))
        report("statements_per_chunk", self.statements_per_chunk())
        report("rules_users_per_s", self.rules(options.users))
        for phase, ms in self.rules_phases(options.users).items():
            report(f"phase {phase}", ms)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child: the database URL
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)  # raw worker: the job id
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.floor:
        return floor_worker(options.floor, options.chunk)
    if options.run:
        return Runner(options.run, options).run()

    backends = options.backends.split(",")
    results = {}
    for backend, url in backend_urls("bench_engine", backends).items():
        print(f"[{backend}] running …", file=sys.stderr)
        args = [f"--{name}={getattr(options, name)}" for name in ("items", "naive", "users")]
        process = subprocess.run(
            [sys.executable, "-m", "tests.bench.engine", "--run", url, *args],
            cwd=ROOT,
            env=child_env(url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        results[backend] = figures = parse_figures(process.stdout)
        figures["engine_vs_naive"] = figures["noop_items_per_s"] / figures["naive_items_per_s"]

    def row(label, fmt, key, baseline):
        return (label, baseline, {b: fmt.format(results[b][key]) for b in backends if key in results[b]})

    n = f"{options.items:,}"
    phases = [key for key in results[backends[-1]] if key.startswith("phase ")]
    print_table(
        "Job engine benchmark",
        f"{WORKERS} workers on this machine ({_cores()} cores) share it with the database; no-op extractor: "
        f"profiles without behaviours, no events. Rates run from handing the work to processes already "
        f"up until the last item is seen done (parent's monotonic clock). Default chunk size.",
        [
            row(
                f"raw floor: claim + done, {n} items, items/s, median of {RUNS}",
                "{:,.0f}",
                "floor_items_per_s",
                BASELINE_FLOOR,
            ),
            row(
                f"engine, no-op, {n} items, items/s, median of {RUNS}",
                "{:,.0f}",
                "noop_items_per_s",
                f"{BASELINE_NOOP}; target ≥ {TARGET_NOOP:,}",
            ),
            row(
                f"engine / raw floor, median of {RUNS} turns (each its own floor)",
                "{:.2f}",
                "engine_vs_floor",
                f"target ≥ {TARGET_ENGINE_VS_FLOOR}",
            ),
            row(
                f"naive: one task per user ({options.naive:,}), items/s",
                "{:,.0f}",
                "naive_items_per_s",
                BASELINE_NAIVE,
            ),
            row("engine / naive", "{:,.0f}×", "engine_vs_naive", f"target ≥ {TARGET_ENGINE_VS_NAIVE}×"),
            row(
                "statements per no-op chunk (worker's connection)",
                "{:.1f}",
                "statements_per_chunk",
                f"{BASELINE_STATEMENTS}; target ≤ {TARGET_STATEMENTS}",
            ),
            row(
                "no-op job: its bell to its start (a drain taking it), s",
                "{:.2f}",
                "noop_start_s",
                "0.5 (broker poll 0.5 s)",
            ),
            row(f"progress query p50 during the {n}-item job, ms", "{:.1f}", "progress_p50_ms", "-"),
            row(
                f"progress query p95 during the {n}-item job, ms",
                "{:.1f}",
                "progress_p95_ms",
                f"target ≤ {TARGET_PROGRESS_P95_MS}",
            ),
            row(
                f"rules extraction end to end, {options.users:,} sample users, users/s",
                "{:,.0f}",
                "rules_users_per_s",
                f"{BASELINE_RULES}; target ≥ {TARGET_RULES:,}",
            ),
            *[row(f"  rules chunk, one worker: {key[6:]}, ms/chunk", "{:.1f}", key, "-") for key in phases],
        ],
        backends,
    )


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
