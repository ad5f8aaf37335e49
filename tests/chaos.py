"""The chaos suite: real clusters doing real jobs while faults land at random moments, then every
promise of the failure model (docs/architecture.md) is checked on what is left in the database.

    python -m tests.chaos [--seconds 600] [--seed N] [--clusters 2] [--users 1500] [--brokers orm,redis]

On a fresh PostgreSQL database: sample users, the tests' OpenAI-compatible server (misbehaving at
random), and `--clusters` real `qcluster` processes per broker phase (the time is shared between the
phases). Jobs of the rules and the LLM extractor are started, overlapping, cancelled and resumed,
while these faults are injected:

  kill-child     SIGKILL a process of a cluster (a worker, its pusher or monitor)
  kill-cluster   SIGKILL a whole cluster, restarted a few seconds later
  freeze         SIGSTOP a process of a cluster for longer than a lease, then SIGCONT
  drop-db        pg_terminate_backend() on every connection to the database but this one
  drop-redis     CLIENT KILL of the clusters' Redis connections (Redis phase)

The same seed draws the same faults at the same moments, so a failing run can be replayed (the
processes' own timing still varies). When the time is up the faults stop, the jobs are left to end,
and the invariants are checked; the exit status is 1 if any broke.
"""

import argparse
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import suppress
from pathlib import Path

from tests.bench.common import drop_pg_database, pg_database

LEASE = 4  # seconds: short, so that frozen and dead workers' chunks are taken over often
REDIS_USER, REDIS_PASSWORD = "eventproject-chaos", "chaos"
FAULTS = ("kill-child", "kill-cluster", "freeze", "drop-db", "drop-redis")
ACTIONS = ("start", "start", "start", "cancel", "resume")


class Chaos:
    def __init__(self, args, log_dir: Path):
        from tests.cluster import Cluster
        from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

        self.args, self.rng, self.log_dir = args, random.Random(args.seed), log_dir
        self.started = time.monotonic()
        self.server = FakeOpenAIServer().__enter__()
        self.server.fake.latency = 0.02
        self.server.fake.timeout_seconds = 3.0  # longer than the jobs' 2 s request timeout
        self.server.fake.fault_rate = 0.15
        self.server.fake.faults = random.Random(args.seed)
        self.cluster_class = Cluster
        self.env = {
            "Q_WORKERS": "2",
            "JOBS_LEASE_SECONDS": str(LEASE),
            "JOBS_DRAIN_STALE_SECONDS": str(LEASE),
            "JOBS_HEAL_SECONDS": "1",
            "JOBS_DRAIN_BUDGET_SECONDS": "20",  # continuations happen during the run
            "JOBS_RETRY_BACKOFF_SECONDS": "1",
            "JOBS_RETRY_BACKOFF_MAX_SECONDS": "5",
            "EXTRACTION_LLM_BACKOFF_SECONDS": "0.1",
            "OPENAI_BASE_URL": self.server.base_url,
            "OPENAI_API_KEY": API_KEY,
            "EXTRACTION_LLM_MODEL": MODEL,
        }
        self.clusters: list = []
        self.faults: Counter = Counter()
        self.actions: Counter = Counter()
        self.timers: list[threading.Timer] = []

    # Output -------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    # Clusters -----------------------------------------------------------------------------------
    def start_cluster(self, index: int, broker_env: dict) -> None:
        log = self.log_dir / f"cluster-{index}-{len(self.clusters)}.log"
        cluster = self.cluster_class(log, **self.env, **broker_env)
        if index < len(self.clusters):
            self.clusters[index] = cluster
        else:
            self.clusters.append(cluster)

    def stop_clusters(self) -> None:
        for cluster in self.clusters:
            with suppress(ProcessLookupError):
                os.killpg(cluster.process.pid, signal.SIGCONT)  # a frozen process cannot stop
            cluster.stop()
        self.clusters = []

    # Faults -------------------------------------------------------------------------------------
    def inject(self, fault: str, broker_env: dict) -> None:
        rng = self.rng
        index = rng.randrange(len(self.clusters))
        cluster = self.clusters[index]
        if fault in ("kill-child", "freeze"):
            children = cluster.sentinels_children()
            if not children:
                return
            pid = rng.choice(children)
            if fault == "kill-child":
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.say(f"SIGKILL process {pid} of cluster {index}")
            else:
                seconds = LEASE + rng.uniform(1, 4)
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                self.later(seconds, lambda: self._thaw(pid))
                self.say(f"SIGSTOP process {pid} of cluster {index} for {seconds:.1f} s")
        elif fault == "kill-cluster":
            cluster.kill()
            delay = rng.uniform(0, 5)
            self.say(f"SIGKILL cluster {index} (all its processes); a new one in {delay:.1f} s")
            time.sleep(delay)
            self.start_cluster(index, broker_env)
        elif fault == "drop-db":
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                (dropped,) = cursor.fetchone()
            self.say(f"pg_terminate_backend: {dropped} connections dropped")
        elif fault == "drop-redis":
            if "REDIS_URL" not in broker_env:
                return
            import redis

            dropped = redis.Redis(host="127.0.0.1").execute_command("CLIENT", "KILL", "USER", REDIS_USER)
            self.say(f"CLIENT KILL: {dropped} Redis connections dropped")
        self.faults[fault] += 1

    def _thaw(self, pid: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def later(self, seconds: float, action) -> None:
        timer = threading.Timer(seconds, action)
        timer.start()
        self.timers.append(timer)

    # Jobs ---------------------------------------------------------------------------------------
    def act(self, action: str) -> None:
        from extraction.models import UserProfile
        from jobs.errors import JobConflict, JobError
        from jobs.models import Job, JobItem
        from jobs.services import job_cancel, job_resume, job_start
        from tests.fake_openai import MODEL

        rng = self.rng
        if action == "start":
            extractor = rng.choice(["rules", "llm", "llm"])
            pool = UserProfile.objects.order_by("?")
            if rng.random() < 0.7:  # mostly users free to start; else some may be busy (an overlap)
                pool = pool.exclude(job_items__status__in=JobItem.ACTIVE)
            users = list(pool.values_list("user_id", flat=True)[: rng.randint(50, 400)])
            if not users:
                return
            options = {"model": MODEL, "max_concurrency": 4, "timeout": 2.0} if extractor == "llm" else {}
            chunk = rng.choice([5, 20, 50])
            try:
                job = job_start(user_ids=users, extractor=extractor, options=options, chunk_size=chunk)
            except JobConflict as exc:  # overlapping with a running job: refused, by name
                self.actions["start refused (overlap)"] += 1
                self.say(f"start refused: {str(exc)[:80]}")
                return
            self.actions[f"start {extractor}"] += 1
            self.say(f"started job {job.id}: {extractor}, {len(users)} users, chunks of {chunk}")
            return
        statuses = [Job.Status.QUEUED, Job.Status.RUNNING] if action == "cancel" else list(Job.FINISHED)
        job = Job.objects.filter(status__in=statuses).order_by("?").first()
        if job is None:
            return
        try:
            job = job_cancel(job) if action == "cancel" else job_resume(job)
        except JobError as exc:
            self.actions[f"{action} refused"] += 1
            self.say(f"{action} of job {job.id} refused: {exc}")
            return
        self.actions[action] += 1
        self.say(f"{action}: job {job.id} is {job.status}")

    # A phase ------------------------------------------------------------------------------------
    def phase(self, broker: str, seconds: float) -> None:
        from django.db import connection

        broker_env = {"Q_CLUSTER_NAME": f"chaos-{uuid.uuid4().hex[:8]}"}
        if broker == "redis":
            broker_env["REDIS_URL"] = f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:6379/0"
        self._broker_of_this_process(broker_env)
        self.say(f"phase {broker}: {self.args.clusters} clusters for {seconds:.0f} s")
        for index in range(self.args.clusters):
            self.start_cluster(index, broker_env)
        end = time.monotonic() + seconds
        faults = [f for f in FAULTS if broker == "redis" or f != "drop-redis"]
        while time.monotonic() < end:
            time.sleep(min(self.rng.expovariate(1.0), max(end - time.monotonic(), 0)))
            try:
                if self.rng.random() < 0.5:
                    self.inject(self.rng.choice(faults), broker_env)
                else:
                    self.act(self.rng.choice(ACTIONS))
            except Exception as exc:  # this process's connection was dropped, too: go on
                self.say(f"the controller saw {type(exc).__name__}: {exc}")
                connection.close()
        for timer in self.timers:
            timer.cancel()
            timer.function()  # thaw whatever is still frozen
        self.timers = []
        self.say("faults stopped; waiting for every job to end")
        self.settle()
        self.stop_clusters()

    def _broker_of_this_process(self, broker_env: dict) -> None:
        """Ring through the phase's broker from here too (django-q2 reads its Conf once)."""
        from django_q.conf import Conf

        Conf.ORM = None if "REDIS_URL" in broker_env else "default"
        Conf.REDIS = broker_env.get("REDIS_URL")
        Conf.PREFIX = Conf.CLUSTER_NAME = broker_env["Q_CLUSTER_NAME"]

    def settle(self, timeout: float = 600) -> None:
        from jobs.models import Job

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = Job.objects.exclude(status__in=Job.FINISHED).count()
            if not active:
                return
            time.sleep(1)
        raise SystemExit(f"chaos: {active} jobs did not end within {timeout:.0f} s of the last fault")


def check(server) -> list[tuple[str, bool, str]]:
    """Every invariant, on what the database holds now: (promise, held, detail)."""
    from django.db.models import Count, Sum

    from extraction.models import ExtractedEvent, ExtractionState
    from jobs.models import Job, JobItem

    results = []
    jobs = Job.objects.all()
    unfinished = jobs.exclude(status__in=Job.FINISHED).count()
    results.append(("every job ended", unfinished == 0, f"{jobs.count()} jobs, {unfinished} not ended"))
    holding = JobItem.objects.filter(status__in=JobItem.ACTIVE).values("job_id").distinct().count()
    results.append(
        ("no finished job holds pending or running items", holding == 0, f"{holding} jobs hold some")
    )

    wrong = []
    for job in jobs:
        counts = dict(job.items.values_list("status").annotate(n=Count("id")))
        sums = job.items.aggregate(
            events=Sum("event_count", default=0),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
        truth = (
            sum(counts.values()),
            counts.get("succeeded", 0),
            counts.get("failed", 0),
            counts.get("cancelled", 0),
            job.items.filter(status="succeeded").aggregate(n=Sum("event_count", default=0))["n"],
            sums["prompt"] or 0,
            sums["completion"] or 0,
        )
        kept = (
            job.total_items,
            job.succeeded_items,
            job.failed_items,
            job.cancelled_items,
            job.event_count,
            job.prompt_tokens,
            job.completion_tokens,
        )
        if truth != kept:
            wrong.append(f"job {job.id}: counters {kept} but items say {truth}")
    results.append(
        ("each job's counters and tokens equal its item rows", not wrong, "; ".join(wrong[:3]) or "all")
    )

    # Each user's events come from one run and use each behaviour at most once.
    doubled, runs, gaps = [], [], []
    by_user: dict[str, list] = {}
    for user_id, sequence, ids, version, created in ExtractedEvent.objects.order_by(
        "user_id", "sequence"
    ).values_list("user_id", "sequence", "behavior_ids", "extractor_version", "created_at"):
        by_user.setdefault(user_id, []).append((sequence, ids, version, created))
    for user_id, events in by_user.items():
        cited = [i for _, ids, _, _ in events for i in ids]
        if len(cited) != len(set(cited)):
            doubled.append(user_id)
        if len({(version, created) for _, _, version, created in events}) > 1:
            runs.append(user_id)
        if [sequence for sequence, *_ in events] != list(range(1, len(events) + 1)):
            gaps.append(user_id)
    results.append(
        ("no behaviour in two events of a user", not doubled, f"{len(doubled)} users: {doubled[:5]}")
    )
    results.append(("a user's events come from one run", not runs, f"{len(runs)} users: {runs[:5]}"))
    results.append(("event sequences have no gaps", not gaps, f"{len(gaps)} users: {gaps[:5]}"))

    succeeded = set(JobItem.objects.filter(status="succeeded").values_list("user_id", flat=True))
    # The state describes the last success, also after a later failure (then its status is "failed").
    states = dict(ExtractionState.objects.exclude(extracted_at=None).values_list("user_id", "event_count"))
    missing = [u for u in succeeded if u not in states or states[u] != len(by_user.get(u, []))]
    results.append(
        (
            "every succeeded user has its events, as its state records",
            not missing,
            f"{len(succeeded)} users succeeded at least once; {len(missing)} wrong: {missing[:5]}",
        )
    )
    # A user is committed once per success: its state's time is that of its events.
    paid = sum(r["usage"]["total_tokens"] for r in server.requests if "usage" in r)
    recorded = sum(j.prompt_tokens + j.completion_tokens for j in jobs)
    results.append(
        (
            "tokens paid are recorded (at most the calls of killed workers missing)",
            0 < recorded <= paid or paid == 0,
            f"server answered {paid:,} tokens, jobs recorded {recorded:,}",
        )
    )
    return results


def setup_database(args) -> str:
    name = f"eventproject_chaos_{os.getpid()}"
    url = pg_database(name)
    if not args.keep:
        import atexit

        atexit.register(drop_pg_database, name)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventproject.settings")
    import django

    django.setup()
    import logging

    from django.core.management import call_command

    logging.getLogger("django-q").setLevel(logging.WARNING)  # not a line per enqueued task

    call_command("migrate", verbosity=0)
    call_command("generate_sample_data", users=args.users, seed=args.seed, verbosity=0)
    return url


def redis_user() -> None:
    """A Redis user of our own, so that CLIENT KILL drops only this suite's connections."""
    import redis

    redis.Redis(host="127.0.0.1").execute_command(
        "ACL", "SETUSER", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="time faults are injected (all phases)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed)")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--brokers", default="orm,redis", help="phases, each on its own broker")
    parser.add_argument("--keep", action="store_true", help="keep the database for a look afterwards")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped run stops its clusters too
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if args.seconds <= 0 or args.clusters < 1 or args.users < 10 or not set(brokers) <= {"orm", "redis"}:
        parser.error("--seconds > 0, --clusters >= 1, --users >= 10, --brokers from orm,redis")
    print(
        f"chaos: seed {args.seed} (replay: python -m tests.chaos --seconds {args.seconds:g} "
        f"--seed {args.seed} --clusters {args.clusters} --users {args.users} --brokers {args.brokers})",
        flush=True,
    )
    url = setup_database(args)
    if "redis" in brokers:
        redis_user()
    log_dir = Path(os.environ.get("CHAOS_LOG_DIR") or f"/tmp/eventproject-chaos-{args.seed}")
    log_dir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(args, log_dir)
    try:
        for broker in brokers:
            chaos.phase(broker, args.seconds / len(brokers))
    finally:
        chaos.stop_clusters()
        chaos.server.__exit__(None, None, None)
    results = check(chaos.server.fake)
    print(
        f"\nchaos run, seed {args.seed}: {args.seconds:g} s of faults over {', '.join(brokers)} "
        f"on PostgreSQL ({url.rsplit('/', 1)[-1]}), {args.clusters} clusters × 2 workers, "
        f"{args.users} sample users; cluster logs in {log_dir}"
    )
    print(
        "injected: " + (", ".join(f"{name} × {n}" for name, n in sorted(chaos.faults.items())) or "nothing")
    )
    print(
        "actions:  " + (", ".join(f"{name} × {n}" for name, n in sorted(chaos.actions.items())) or "nothing")
    )
    from jobs.models import Job

    outcomes = Counter(Job.objects.values_list("status", flat=True))
    print("jobs:     " + ", ".join(f"{status} × {n}" for status, n in sorted(outcomes.items())))
    for promise, held, detail in results:
        print(f"  {'held  ' if held else 'BROKEN'}  {promise}: {detail}")
    return 0 if all(held for _, held, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
