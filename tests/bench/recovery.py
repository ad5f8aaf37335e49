"""Benchmark of recovery: how long work stands still after a crash or an outage, on PostgreSQL
with either broker.

    python -m tests.bench.recovery [--brokers orm,redis] [--runs 2] [--only restart,partition,…]

On a PostgreSQL server and a Redis server of its own (tests/own_servers.py: the machine's servers
are never touched), real `qcluster` processes (2 workers each, the default lease of
JOBS_LEASE_SECONDS) run a job of the tests' scripted extractor (20 ms per user, chunks of 10), and:
  - restart: the only cluster is SIGKILLed mid-job and a new one started; measured from the new
    cluster's start to the next user committed. Goal: 15 s.
  - freeze: a worker is SIGSTOPped (and thawed at the end); measured from the freeze to the moment
    every user being worked on then (its chunk among them) is committed. Goal: the lease + 15 s.
  - pg-restart: PostgreSQL restarted (`pg_ctl restart -m fast`) mid-job; measured from the moment
    it accepts connections again to the next user committed. Goal: 15 s.
  - db-away: PostgreSQL stopped for 20 s mid-job, then started; measured the same way. Goal: 15 s.
  - partition (as root): of two clusters, the one in a network namespace (tests/partition.py) is cut
    off silently mid-job; measured from the cut to the moment every user being worked on then is
    committed (its chunk by the other cluster): goal the lease + 15 s; then healed, and measured
    from the heal to its next user extracted: goal 30 s.
"""

import argparse
import contextlib
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.bench.common import print_table

EXTRACTORS = "test=tests.extractors.ScriptedExtractor"
RESTART_GOAL = 15.0  # seconds from a new cluster's start (the reliability issue's goal)
FREEZE_SLACK = 15.0  # seconds past the lease (the same issue)
AWAY_SECONDS = 20.0  # how long PostgreSQL is stopped in db-away
HEAL_GOAL = 30.0  # seconds from a partition's heal to the cut cluster's next user


class Bench:
    def __init__(self, folder: Path, pg, namespace):
        from django.conf import settings

        self.folder, self.pg, self.ns = folder, pg, namespace
        self.lease = settings.JOBS_LEASE_SECONDS
        self.runs = 0

    def cluster(self, broker: dict, namespace=None):
        from tests.cluster import Cluster

        self.runs += 1
        return Cluster(
            self.folder / f"cluster-{self.runs}.log",
            namespace=namespace,
            EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS,
            **broker,
        )

    def job(self, calls_file: Path | None = None, users: int = 2000):
        """A job over `users` new users (profiles only: the scripted extractor needs no more), so that
        no run waits for the last one's users to be free."""
        from extraction.services import profiles_upsert
        from jobs.services import job_start

        ids = [f"r{self.runs}-{i:05d}" for i in range(users)]
        profiles_upsert({user_id: {} for user_id in ids})
        options = {"seconds_per_user": 0.02, **({"calls_file": str(calls_file)} if calls_file else {})}
        return job_start(user_ids=ids, extractor="test", options=options, chunk_size=10, enqueue=False)

    def restart(self, broker: dict) -> float:
        from jobs.healing import jobs_heal
        from jobs.models import Job
        from tests.cluster import wait_for

        first = self.cluster(broker)
        job = self.job()
        jobs_heal(force=True)  # rung through the broker of this process (see main)
        done = Job.objects.filter(id=job.id).values_list("succeeded_items", flat=True)
        wait_for(lambda: done.get() >= 200, timeout=120, what="progress")
        first.kill()
        at_kill = done.get()
        second = self.cluster(broker)
        started = time.monotonic()
        try:
            wait_for(
                lambda: done.get() > at_kill, timeout=300, what="progress after the restart", interval=0.02
            )
            return time.monotonic() - started
        finally:
            second.stop()
            self.cancel(job)

    def freeze(self, broker: dict) -> float:
        from jobs.healing import jobs_heal
        from tests.cluster import wait_for
        from tests.test_cluster import pids_of

        calls = self.folder / f"calls-{uuid.uuid4().hex[:6]}.txt"
        cluster = self.cluster(broker)
        job = self.job(calls)
        jobs_heal(force=True)
        try:
            wait_for(
                lambda: calls.exists() and len(calls.read_text().splitlines()) >= 100,
                timeout=120,
                what="work",
            )
            pid = pids_of(calls)[-1]
            os.kill(pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            # Whatever was being worked on when the worker froze, its chunk among it.
            self.held_done_elsewhere(job, "the frozen worker's chunk done elsewhere")
            return time.monotonic() - frozen_at
        finally:
            for process in cluster.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, signal.SIGCONT)
            cluster.stop()
            self.cancel(job)

    def pg_restart(self, broker: dict) -> float:
        return self.outage(broker, lambda: self.pg.restart("fast"))

    def db_away(self, broker: dict) -> float:
        def away() -> None:
            self.pg.stop("fast")
            time.sleep(AWAY_SECONDS)
            self.pg.start()

        return self.outage(broker, away)

    def outage(self, broker: dict, fault) -> float:
        """Seconds from the end of `fault` (the server accepting connections again) to the next
        user the job commits, read from the items' finished_at (the database's clock)."""
        from django.db import DatabaseError
        from django.utils import timezone

        from eventproject.db import connection_reset
        from jobs.healing import jobs_heal
        from jobs.models import Job, JobItem
        from tests.cluster import wait_for

        cluster = self.cluster(broker)
        job = self.job()
        jobs_heal(force=True)
        done = Job.objects.filter(id=job.id).values_list("succeeded_items", flat=True)
        try:
            wait_for(lambda: done.get() >= 200, timeout=120, what="progress")
            fault()
            back = timezone.now()

            def committed():
                try:
                    return (
                        JobItem.objects.filter(job=job, finished_at__gt=back).order_by("finished_at").first()
                    )
                except DatabaseError:  # this process's connection, ended by the outage
                    connection_reset()
                    return None

            first = wait_for(committed, timeout=300, what="a user committed after the outage", interval=0.02)
            return (first.finished_at - back).total_seconds()
        finally:
            cluster.stop()
            self.cancel(job)

    def partition(self, broker: dict) -> dict[str, float]:
        """Cut the namespaced one of two clusters off mid-job: (cut → every user being worked on
        then committed), then heal it: (heal → its next user extracted)."""
        from jobs.healing import jobs_heal
        from tests.cluster import wait_for
        from tests.test_cluster import pids_of

        calls = self.folder / f"calls-{uuid.uuid4().hex[:6]}.txt"
        inside, outside = self.cluster(broker, namespace=self.ns), self.cluster(broker)
        job = self.job(calls, users=4000)
        jobs_heal(force=True)

        def extracted_inside() -> int:
            """Users extracted by the cut cluster's processes."""
            pids = inside.pids()
            return sum(1 for pid in pids_of(calls) if pid in pids)

        try:
            wait_for(extracted_inside, timeout=120, what="the cut cluster at work", interval=0.5)
            self.ns.cut()
            cut_at = time.monotonic()
            self.held_done_elsewhere(job, "the cut cluster's chunk done elsewhere")
            taken_over = time.monotonic() - cut_at
            time.sleep(2)  # whatever the cut cluster was extracting when cut is done by now
            before = extracted_inside()
            # With the other cluster gone (SIGKILL), only the healed one can take the work up.
            outside.kill()
            self.ns.heal()
            healed_at = time.monotonic()
            second = self.job(calls, users=500)  # work for it, should the first job be done
            jobs_heal(force=True)
            wait_for(
                lambda: extracted_inside() > before,
                timeout=300,
                what="the healed cluster at work again",
                interval=0.2,
            )
            healed = time.monotonic() - healed_at
            self.cancel(second)
            return {"partition": taken_over, "partition_heal": healed}
        finally:
            self.ns.heal()
            inside.stop()
            outside.stop()
            self.cancel(job)

    @staticmethod
    def held_done_elsewhere(job, what: str) -> None:
        """Wait until every user of `job` being worked on now is committed (by whoever takes it over:
        the freeze's and the partition's measure)."""
        from jobs.models import JobItem
        from tests.cluster import wait_for

        held = list(JobItem.objects.filter(job=job, status="running").values_list("id", flat=True))
        wait_for(
            lambda: not JobItem.objects.filter(id__in=held).exclude(status="succeeded").exists(),
            timeout=300,
            what=what,
            interval=0.05,
        )

    @staticmethod
    def cancel(job) -> None:
        from jobs.errors import JobError
        from jobs.healing import jobs_heal
        from jobs.services import job_cancel

        with contextlib.suppress(JobError):
            job_cancel(job)
        jobs_heal()


MEASUREMENTS = {  # name: (what is measured, its goal in words; the lease is filled in)
    "restart": ("new cluster start → next user committed", f"goal ≤ {RESTART_GOAL:.0f} s"),
    "freeze": ("worker frozen → its chunk committed elsewhere", "goal ≤ {lease_goal}"),
    "pg_restart": ("PostgreSQL restarted (-m fast) → next user committed", f"goal ≤ {RESTART_GOAL:.0f} s"),
    "db_away": (
        f"PostgreSQL back after {AWAY_SECONDS:.0f} s away → next user committed",
        f"goal ≤ {RESTART_GOAL:.0f} s",
    ),
    "partition": ("cluster cut off by a partition → its chunk committed elsewhere", "goal ≤ {lease_goal}"),
    "partition_heal": (
        "partition healed (the other cluster killed) → the cluster extracts again",
        f"goal ≤ {HEAL_GOAL:.0f} s",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="orm,redis")
    parser.add_argument("--runs", type=int, default=2, help="runs of each measurement (the median is shown)")
    parser.add_argument("--only", default="", help="some of restart,freeze,pg_restart,db_away,partition")
    args = parser.parse_args()
    from tests.own_servers import PostgresServer, RedisServer
    from tests.partition import NetworkNamespace, namespaces_available

    if why := namespaces_available():
        print(f"no partition figures: {why}")
    with contextlib.ExitStack() as stack:
        ns = None if why else stack.enter_context(NetworkNamespace())
        reachable = [ns] if ns else []
        pg = stack.enter_context(PostgresServer(reachable_from=reachable))
        redis_server = stack.enter_context(RedisServer(reachable_from=reachable))
        measure(args, pg, redis_server, ns)


def measure(args, pg, redis_server, ns) -> None:
    os.environ.update({"DATABASE_URL": pg.create_database("eventproject_bench_recovery")})
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventproject.settings")
    os.environ["EXTRACTION_EXTRA_EXTRACTORS"] = EXTRACTORS
    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django_q.conf import Conf

    logging.getLogger("django-q").setLevel(logging.WARNING)
    call_command("migrate", verbosity=0)
    bench = Bench(Path(tempfile.mkdtemp(prefix="bench-recovery-")), pg, ns)
    runs = ["restart", "freeze", "pg_restart", "db_away", *(["partition"] if ns else [])]
    runs = [run for run in runs if run in args.only.split(",")] if args.only else runs
    rows: dict[str, dict[str, str]] = {name: {} for name in MEASUREMENTS}
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for broker_name in brokers:
        broker = {"Q_CLUSTER_NAME": f"bench-{uuid.uuid4().hex[:8]}"}
        if broker_name == "redis":
            broker["REDIS_URL"] = redis_server.url()
        Conf.ORM = None if broker_name == "redis" else "default"  # ring through it from here too
        Conf.REDIS = broker.get("REDIS_URL")
        Conf.CLUSTER_NAME = Conf.PREFIX = broker["Q_CLUSTER_NAME"]
        times: dict[str, list[float]] = {}
        for what in runs:
            for _ in range(args.runs):
                figures = getattr(bench, what)(broker)  # seconds, or {figure: seconds}
                for name, seconds in (figures if isinstance(figures, dict) else {what: figures}).items():
                    times.setdefault(name, []).append(seconds)
        for name, values in times.items():
            shown = ", ".join(f"{t:.1f}" for t in values)
            rows[name][broker_name] = f"{statistics.median(values):.1f} s ({shown})"
    connection.close()
    lease = bench.lease
    lease_goal = f"{lease + FREEZE_SLACK:.0f} s (lease {lease} + {FREEZE_SLACK:.0f})"
    print_table(
        "Recovery after a crash or an outage (tests/bench/recovery.py)",
        f"PostgreSQL and Redis servers of its own, real qcluster processes with 2 workers each, lease "
        f"{lease} s, heal every {settings.JOBS_HEAL_SECONDS:g} s; job of 2,000 users, 20 ms each, "
        f"chunks of 10; median of {args.runs} runs (each run in brackets)",
        [
            (label, goal.format(lease_goal=lease_goal), rows[name])
            for name, (label, goal) in MEASUREMENTS.items()
        ],
        brokers,
    )


if __name__ == "__main__":
    main()
