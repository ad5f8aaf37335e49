"""The chaos suite: real clusters doing real jobs while faults land at random moments, then every
promise of the failure model (docs/architecture.md) is checked on what is left in the database.

    python -m tests.chaos [--seconds 600] [--seed N] [--clusters 2] [--users 1500] [--brokers orm,redis]

It runs on servers of its own (tests/own_servers.py): a PostgreSQL server initdb'd into a temporary
folder, on its own port, and for the Redis phase a Redis server, so that it may restart them or
take them away; the machine's servers are never touched. Sample users, the tests' OpenAI-compatible
server (misbehaving at random, and answering a few "hostile" users with what no parser should choke
on), and `--clusters` real `qcluster` processes per broker phase (the time is shared between the
phases); the first cluster runs in a network namespace (tests/partition.py, as root) so that it can
be cut off. Jobs of the rules and the LLM extractor are started, overlapping, of every priority,
some with max_workers, cancelled and resumed, while these faults are injected:

  kill-child      SIGKILL a process of a cluster (a worker, its pusher or monitor)
  kill-cluster    SIGKILL a whole cluster, restarted a few seconds later
  freeze          SIGSTOP a process of a cluster for longer than a lease, then SIGCONT
  drop-db         pg_terminate_backend() on every connection to the database but this one
  pg-restart      pg_ctl restart -m fast: every session ended, the server back within seconds
  db-away         PostgreSQL stopped for 10-30 s, then started again
  partition       the namespaced cluster cut off (every packet dropped, silently) for longer than
                  DEAD_PEER_SECONDS, then healed
  hostile-answer  an LLM job including hostile users, whose answers hold a 5,000-digit number,
                  no JSON at all, or events of the wrong shape
  receiver-away   the webhook receiver stopped (connections refused) for 3-15 s
  drop-redis      CLIENT KILL of the clusters' Redis connections (Redis phase)
  redis-restart   Redis restarted, every key lost (Redis phase)

Meanwhile the clusters tell a real webhook receiver (tests/receiver.py, reachable from the namespace
too) of every job that ends, and run a schedule due every minute (over users of its own): every
ended job must be announced, signed, with its final status, a redelivery keeping its message id,
and each due minute must start at most one job, whatever the faults.

Faults are dealt from a shuffled deck of these kinds, so each kind comes up once per round. The same
seed deals the same faults at the same moments, so a failing run can be replayed (the processes'
own timing still varies). When the time is up the faults stop, the jobs are left to end, and the
invariants are checked, among them: no job fails, and no user fails or is cancelled, because of an
injected fault (only jobs the suite cancelled end cancelled; only hostile users fail, in LLM jobs,
each with its error). Per fault kind the summary gives the recovery: from the fault's end until
every job then active committed again. The exit status is 1 if any invariant broke.
"""

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.receiver import Receiver

LEASE = 4  # seconds: short, so that frozen and dead workers' chunks are taken over often
DEAD_PEER_SECONDS = 6  # the clusters notice a silent peer this fast (the partitions last longer)
FAULTS = (
    "kill-child",
    "kill-cluster",
    "freeze",
    "drop-db",
    "pg-restart",
    "db-away",
    "partition",
    "hostile-answer",
    "receiver-away",
    "drop-redis",
    "redis-restart",
)
REDIS_FAULTS = ("drop-redis", "redis-restart")
ACTIONS = ("start", "start", "start", "cancel", "resume")
HOSTILE_KINDS = ("huge-number", "not-json", "wrong-shape")
SCHEDULED_USERS = 60  # the schedule's own users
HUGE = "9" * 5000  # beyond the 4,300 digits Python's int() reads


def hostile_model(hostile: dict[str, str]):
    """The fake model (tests/fake_openai.py, imported once Django is set up), answering each hostile
    user (id -> kind) with something hostile: a call including one fails as a whole (not JSON, or a
    number too long to read) or for that user alone (events of the wrong shape). The extractor must
    narrow it down to that user and fail only it."""
    from extraction.extractors.llm import USERS_MARKER
    from tests.fake_openai import FakeLLM

    class HostileLLM(FakeLLM):
        def _answer(self, headers, body, directive):
            status, extra, reply = super()._answer(headers, body, directive)
            if status != 200:
                return status, extra, reply
            prompt = body["messages"][-1]["content"]
            asked = json.loads(prompt.split(USERS_MARKER, 1)[1]) if USERS_MARKER in prompt else {}
            kinds = {user: hostile[user] for user in asked if user in hostile}
            if not kinds:
                return status, extra, reply
            message = reply["choices"][0]["message"]
            try:
                answer = json.loads(message["content"])["users"]
            except (KeyError, TypeError, ValueError, RecursionError):  # mangled by a directive (a
                answer = None  # <think> block or a fence the extractor would see through)
            for user, kind in kinds.items():
                if answer is None or user not in answer:
                    continue
                if kind == "huge-number":
                    answer[user] = [
                        {"event_type": "purchase", "category": "conversion", "behavior_ids": ["HUGE"]}
                    ]
                elif kind == "wrong-shape":
                    answer[user] = {"events": 42, "behavior_ids": "all of them"}
            if answer is None or "not-json" in kinds.values():
                message["content"] = "I would rather not answer in JSON today. " * 20
            else:
                message["content"] = json.dumps({"users": answer}).replace('"HUGE"', HUGE)
            return status, extra, reply

    return HostileLLM()


class SigningChecked(Receiver):
    """The receiver, verifying each request with the reference `standardwebhooks` library as it
    arrives (a signature's timestamp is good for five minutes only): `verified` holds, in order,
    (message id, body, the payload or the verification's error)."""

    secret = ""

    def __init__(self) -> None:
        self.verified: list[tuple[str, bytes, Any]] = []
        super().__init__()

    def record(self, request) -> None:
        from standardwebhooks import Webhook

        try:
            payload: Any = Webhook(self.secret).verify(request.body, request.headers)
        except Exception as exc:  # any: kept, and reported as a broken promise
            payload = exc
        with self.lock:
            self.verified.append((request.headers.get("webhook-id", ""), request.body, payload))
        super().record(request)


class Chaos:
    def __init__(self, args, log_dir: Path, pg, redis_server, namespace, hostile: dict[str, str]):
        from tests.cluster import Cluster
        from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

        self.args, self.rng, self.log_dir = args, random.Random(args.seed), log_dir
        self.pg, self.redis, self.ns, self.hostile = pg, redis_server, namespace, hostile
        self.started = time.monotonic()
        self.server = FakeOpenAIServer()
        self.server.fake = self.server.httpd.fake = hostile_model(hostile)
        self.server.__enter__()
        self.also = namespace.listen_also(self.server.httpd) if namespace else None
        self.server.fake.latency = 0.02
        self.server.fake.timeout_seconds = 3.0  # longer than the jobs' 2 s request timeout
        self.server.fake.fault_rate = 0.15
        self.server.fake.faults = random.Random(args.seed)
        self.receiver = SigningChecked()
        self.receiver_also = namespace.listen_also(self.receiver.server) if namespace else None
        self.cluster_class = Cluster
        self.env = {
            "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES": "1",  # the receiver is on this machine
            "WEBHOOKS_TIMEOUT_SECONDS": "2",
            "WEBHOOKS_RETRY_BACKOFF_SECONDS": "0.5",
            "WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS": "2",
            "Q_WORKERS": "2",
            "JOBS_LEASE_SECONDS": str(LEASE),
            "JOBS_DRAIN_STALE_SECONDS": str(LEASE),
            "JOBS_HEAL_SECONDS": "1",
            "JOBS_DRAIN_BUDGET_SECONDS": "20",  # continuations happen during the run
            "JOBS_RETRY_BACKOFF_SECONDS": "1",
            "JOBS_RETRY_BACKOFF_MAX_SECONDS": "5",
            "DEAD_PEER_SECONDS": str(DEAD_PEER_SECONDS),
            "EXTRACTION_LLM_BACKOFF_SECONDS": "0.1",
            "OPENAI_BASE_URL": self.server.base_url,
            "OPENAI_API_KEY": API_KEY,
            "EXTRACTION_LLM_MODEL": MODEL,
        }
        self.clusters: list = []
        self.faults: Counter = Counter()
        self.actions: Counter = Counter()
        self.timers: list[threading.Timer] = []
        self.deck: list[str] = []
        self.ends: list[tuple[str, datetime]] = []  # (fault, when it ended): recovery is measured from there
        self.starts: list[datetime] = []  # when each fault began
        self.cancelled: set[int] = set()  # jobs the suite cancelled (they may end cancelled)
        self.exits = 0  # clusters that exited by themselves
        self.broker_env: dict = {}
        self.schedule = self._tell_and_schedule(namespace)
        self.schedule_seconds = self.schedule_resumed_at = 0.0  # how long it was active, since when

    def _tell_and_schedule(self, namespace):
        """The receiver's endpoint (every job event) and a schedule due every minute over a list of
        users of its own (the suite's jobs leave them alone, so that its runs start jobs and the
        hostile users stay free for the suite), paused until a phase starts; returns the schedule."""
        from extraction.models import UserProfile
        from jobs.models import Job
        from jobs.schedules import schedule_create
        from jobs.webhook_events import JOB_CANCELLED, JOB_COMPLETED, JOB_FAILED
        from webhooks.services import endpoint_create

        host = namespace.host_address if namespace else "127.0.0.1"  # one address both sides reach
        _, secret = endpoint_create(
            name="chaos receiver",
            url=f"http://{host}:{self.receiver.port}/hook",
            events=[JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED],
        )
        self.receiver.secret = secret
        others = sorted(set(UserProfile.objects.values_list("user_id", flat=True)) - set(self.hostile))
        self.scheduled = random.Random(self.args.seed).sample(others, min(SCHEDULED_USERS, len(others) // 4))
        return schedule_create(
            name="chaos every minute",
            cron="* * * * *",
            users="list",
            user_ids=self.scheduled,
            priority=Job.Priority.LOW,
            active=False,
        )

    def schedule_active(self, active: bool) -> None:
        """Resume the schedule as a phase starts; pause it when the faults stop, so that the jobs can
        all end. Retried while this process's connection is the one of before a restart."""
        from django.db import DatabaseError, connection

        from jobs.schedules import schedule_pause, schedule_resume

        for _ in range(30):
            try:
                (schedule_resume if active else schedule_pause)(self.schedule)
                now = time.monotonic()
                self.schedule_seconds += 0 if active else now - self.schedule_resumed_at
                self.schedule_resumed_at = now
                return
            except DatabaseError:
                connection.close()
                time.sleep(1)
        raise SystemExit("chaos: the schedule could not be paused or resumed within 30 s")

    # Output -------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    # Clusters -----------------------------------------------------------------------------------
    def start_cluster(self, index: int, broker_env: dict) -> None:
        """Cluster 0 runs in the network namespace (when there is one), the others beside it."""
        log = self.log_dir / f"cluster-{index}-{len(self.clusters)}.log"
        namespace = self.ns if index == 0 else None
        cluster = self.cluster_class(log, namespace=namespace, **self.env, **broker_env)
        if index < len(self.clusters):
            self.clusters[index] = cluster
        else:
            self.clusters.append(cluster)

    def restart_exited(self) -> None:
        """A cluster that exited by itself (one cannot start while the database is away) is started
        again, as the process manager does (deploy/: Restart=on-failure), and counted."""
        for index, cluster in enumerate(self.clusters):
            if cluster.process.poll() is not None:
                self.exits += 1
                self.say(
                    f"cluster {index} exited by itself ({cluster.process.returncode}); starting it again"
                )
                cluster.stop()
                self.start_cluster(index, self.broker_env)

    def stop_clusters(self) -> None:
        for cluster in self.clusters:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cluster.process.pid, signal.SIGCONT)  # a frozen process cannot stop
            cluster.stop()
        self.clusters = []

    # Faults -------------------------------------------------------------------------------------
    def deal(self, faults: list[str]) -> str:
        """The next fault from the deck, shuffled again once every kind has come up."""
        if not self.deck:
            self.deck = self.rng.sample(faults, len(faults))
        return self.deck.pop()

    def ended(self, fault: str) -> None:
        from django.utils import timezone

        self.ends.append((fault, timezone.now()))

    def inject(self, fault: str, broker_env: dict) -> None:
        from django.utils import timezone

        self.starts.append(timezone.now())
        rng = self.rng
        index = rng.randrange(len(self.clusters))
        cluster = self.clusters[index]
        if fault in ("kill-child", "freeze"):
            children = cluster.sentinels_children()
            if not children:
                self.say(f"{fault} skipped: cluster {index} has no worker yet")
                return
            pid = rng.choice(children)
            if fault == "kill-child":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.say(f"SIGKILL process {pid} of cluster {index}")
                self.ended(fault)
            else:
                seconds = LEASE + rng.uniform(1, 4)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                self.later(seconds, lambda: self._thaw(pid))
                self.say(f"SIGSTOP process {pid} of cluster {index} for {seconds:.1f} s")
        elif fault == "kill-cluster":
            cluster.kill()
            delay = rng.uniform(0, 5)
            self.say(f"SIGKILL cluster {index} (all its processes); a new one in {delay:.1f} s")
            time.sleep(delay)
            self.start_cluster(index, broker_env)
            self.ended(fault)
        elif fault == "drop-db":
            import psycopg

            with psycopg.connect(self.pg.url(), autocommit=True) as conn:
                (dropped,) = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ).fetchone()
            self.say(f"pg_terminate_backend: {dropped} connections dropped")
            self.ended(fault)
        elif fault == "pg-restart":
            started = time.monotonic()
            self.pg.restart("fast")
            self.say(f"PostgreSQL restarted (-m fast) in {time.monotonic() - started:.1f} s")
            self.ended(fault)
        elif fault == "db-away":
            seconds = rng.uniform(10, 30)
            self.pg.stop("fast")
            self.say(f"PostgreSQL stopped for {seconds:.0f} s")
            time.sleep(seconds)
            self.pg.start()
            self.say("PostgreSQL started again")
            self.ended(fault)
        elif fault == "partition":
            if self.ns.is_cut:
                self.say("partition skipped: cut off already")
                return
            seconds = DEAD_PEER_SECONDS + rng.uniform(2, 12)
            self.ns.cut()
            self.later(seconds, self._heal)
            self.say(f"cluster 0 cut off (its namespace's packets dropped) for {seconds:.1f} s")
        elif fault == "hostile-answer":
            if not self.start_job("llm", hostile=True):
                self.say("hostile-answer skipped: no job could start")
                return
        elif fault == "receiver-away":
            seconds = rng.uniform(3, 15)
            self._receiver_listening(False)
            self.later(seconds, lambda: self._receiver_listening(True))
            self.say(f"webhook receiver away for {seconds:.1f} s")
        elif fault == "drop-redis":
            import redis

            dropped = redis.Redis(port=self.redis.port).execute_command("CLIENT", "KILL", "TYPE", "normal")
            self.say(f"CLIENT KILL: {dropped} Redis connections dropped")
            self.ended(fault)
        elif fault == "redis-restart":
            self.redis.restart()
            self.say("Redis restarted (every key lost)")
            self.ended(fault)
        self.faults[fault] += 1

    def _thaw(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.ended("freeze")

    def _receiver_listening(self, listening: bool) -> None:
        if listening:
            self.receiver.start()
            self.receiver_also = self.ns.listen_also(self.receiver.server) if self.ns else None
            return  # no recovery measured: the jobs go on while the receiver is away
        if self.receiver_also:
            self.receiver_also.shutdown()
            self.receiver_also.server_close()
        self.receiver.stop()

    def _heal(self) -> None:
        self.ns.heal()
        self.ended("partition")

    def later(self, seconds: float, action) -> None:
        """Do `action` in `seconds` (or at the phase's end, whichever comes first), once."""
        done = threading.Lock()

        def once() -> None:
            if done.acquire(blocking=False):
                action()

        timer = threading.Timer(seconds, once)
        timer.start()
        self.timers.append(timer)

    # Jobs ---------------------------------------------------------------------------------------
    def start_job(self, extractor: str, *, hostile: bool = False) -> bool:
        """Start a job over random users (with `hostile`, over the hostile users free now and some
        others), of a random priority, some capped in workers."""
        from extraction.models import UserProfile
        from jobs.errors import JobConflict
        from jobs.models import Job, JobItem
        from jobs.services import job_start
        from tests.fake_openai import MODEL

        rng = self.rng
        pool = UserProfile.objects.exclude(user_id__in=self.scheduled).order_by("?")
        if hostile or rng.random() < 0.7:  # mostly users free to start; else some may be busy (an overlap)
            pool = pool.exclude(job_items__status__in=JobItem.ACTIVE)
        users = list(pool.values_list("user_id", flat=True)[: rng.randint(50, 400)])
        if hostile:
            free = [
                user
                for user in self.hostile
                if not JobItem.objects.filter(user_id=user, status__in=JobItem.ACTIVE).exists()
            ]
            if not free:
                self.say("every hostile user is busy")
                return False
            users = free + [user for user in users if user not in self.hostile][:100]
        if not users:
            return False
        settings = {
            "options": {"model": MODEL, "max_concurrency": 4, "timeout": 2.0} if extractor == "llm" else {},
            "chunk_size": rng.choice([5, 20, 50]),
            "priority": rng.choice(Job.Priority.values),
            "max_workers": rng.choice([None, None, 1, 2]),
        }
        try:
            job = job_start(user_ids=users, extractor=extractor, **settings)
        except JobConflict as exc:  # overlapping with a running job: refused, by name
            self.actions["start refused (overlap)"] += 1
            self.say(f"start refused: {str(exc)[:80]}")
            return False
        self.actions[f"start {extractor}"] += 1
        self.say(
            f"started job {job.id}: {extractor}, {len(users)} users{' (hostile among them)' * hostile}, "
            f"chunks of {job.chunk_size}, priority {job.get_priority_display()}, "
            f"max_workers {job.max_workers}"
        )
        return True

    def act(self, action: str) -> None:
        from jobs.errors import JobError
        from jobs.models import Job
        from jobs.services import job_cancel, job_resume

        if action == "start":
            self.start_job(self.rng.choice(["rules", "llm", "llm"]))
            return
        statuses = Job.WORKING if action == "cancel" else [Job.Status.CANCELLED]
        job = Job.objects.filter(status__in=statuses).order_by("?").first()
        if job is None:
            return
        try:
            job = job_cancel(job) if action == "cancel" else job_resume(job)
        except JobError as exc:
            self.actions[f"{action} refused"] += 1
            self.say(f"{action} of job {job.id} refused: {exc}")
            return
        if action == "cancel":
            self.cancelled.add(job.id)
        self.actions[action] += 1
        self.say(f"{action}: job {job.id} is {job.status}")

    # A phase ------------------------------------------------------------------------------------
    def phase(self, broker: str, seconds: float) -> None:
        from django.db import connection

        self.broker_env = broker_env = {"Q_CLUSTER_NAME": f"chaos-{uuid.uuid4().hex[:8]}"}
        if broker == "redis":
            broker_env["REDIS_URL"] = self.redis.url()
        self._broker_of_this_process(broker_env)
        self.say(f"phase {broker}: {self.args.clusters} clusters for {seconds:.0f} s")
        for index in range(self.args.clusters):
            self.start_cluster(index, broker_env)
        self.schedule_active(True)
        end = time.monotonic() + seconds
        faults = [f for f in FAULTS if broker == "redis" or f not in REDIS_FAULTS]
        if not self.ns:
            faults.remove("partition")
        self.deck = []
        while time.monotonic() < end:
            time.sleep(min(self.rng.expovariate(1.0), max(end - time.monotonic(), 0)))
            try:
                self.restart_exited()
                if self.rng.random() < 0.5:
                    self.inject(self.deal(faults), broker_env)
                else:
                    self.act(self.rng.choice(ACTIONS))
            except Exception as exc:  # this process's connection was dropped, too: go on
                self.say(f"the controller saw {type(exc).__name__}: {str(exc)[:200]}")
                connection.close()
        self._thaw_all()
        self.schedule_active(False)
        self.say("faults stopped; waiting for every job to end, then for its webhooks")
        self.settle()
        self.deliveries_settle()
        self.stop_clusters()

    def _thaw_all(self) -> None:
        """Do now what the timers still had to do (thaw, heal)."""
        for timer in self.timers:
            timer.cancel()
            timer.function()  # once: a timer that ran already does nothing
        self.timers = []

    def _broker_of_this_process(self, broker_env: dict) -> None:
        """Ring through the phase's broker from here too (django-q2 reads its Conf once)."""
        from django_q.conf import Conf

        Conf.ORM = None if "REDIS_URL" in broker_env else "default"
        Conf.REDIS = broker_env.get("REDIS_URL")
        Conf.PREFIX = Conf.CLUSTER_NAME = broker_env["Q_CLUSTER_NAME"]

    def settle(self, timeout: float = 600) -> None:
        from django.db import DatabaseError, connection

        from jobs.models import Job

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                active = Job.objects.exclude(status__in=Job.FINISHED).count()
            except DatabaseError:  # the connection of before the last restart
                connection.close()
                time.sleep(1)
                continue
            if not active:
                return
            self.restart_exited()
            time.sleep(1)
        raise SystemExit(f"chaos: {active} jobs did not end within {timeout:.0f} s of the last fault")

    def deliveries_settle(self, timeout: float = 120) -> None:
        """Wait until no webhook delivery is left to send (each sent, or given up)."""
        from webhooks.models import Delivery, DeliveryStatus

        deadline = time.monotonic() + timeout
        open_ = Delivery.objects.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING])
        while (left := open_.count()) and time.monotonic() < deadline:
            self.restart_exited()
            time.sleep(0.5)
        if left:
            raise SystemExit(f"chaos: {left} webhook deliveries open {timeout:.0f} s after the jobs ended")

    def recoveries(self) -> dict[str, tuple[int, list[float], list[float]]]:
        """Per fault kind: (injections measured, flowed, every). For each injection, seconds from its
        end until the first user committed by any job active then (the work flowed again), and
        until each of them had committed one (every job; this waits on the fair share too: a
        low-priority job may wait for a worker); jobs that committed nobody after it (a cancel)
        left out. A figure reaching past the next fault's start measures that one too: left out."""
        from django.db.models import Min, Q

        from jobs.models import Job, JobItem

        figures: dict[str, tuple[int, list[float], list[float]]] = {}
        for fault, at in self.ends:
            gap = min(((start - at).total_seconds() for start in self.starts if start > at), default=1e9)
            active = Job.objects.filter(Q(finished_at=None) | Q(finished_at__gt=at), created_at__lte=at)
            waits = []
            for job_id in active.values_list("id", flat=True):
                first = JobItem.objects.filter(job_id=job_id, finished_at__gt=at).aggregate(
                    t=Min("finished_at")
                )
                if first["t"]:
                    waits.append((first["t"] - at).total_seconds())
            if not waits:
                continue
            count, flowed, every = figures.get(fault, (0, [], []))
            flowed += [min(waits)] if min(waits) < gap else []
            every += [max(waits)] if max(waits) < gap else []
            figures[fault] = (count + 1, flowed, every)
        return figures


def check(server, cancelled: set[int], hostile: dict[str, str]) -> list[tuple[str, bool, str]]:
    """Every invariant, on what the database holds now: (promise, held, detail). `cancelled`: the
    jobs the suite cancelled; `hostile`: the users the fake model answers with hostile shapes."""
    from django.db.models import Count, Sum

    from extraction.models import ExtractedEvent, ExtractionState
    from jobs.models import Job, JobItem

    results = []
    jobs = Job.objects.all()
    unfinished = jobs.exclude(status__in=Job.FINISHED).count()
    results.append(("every job ended", unfinished == 0, f"{jobs.count()} jobs, {unfinished} not ended"))
    done = JobItem.objects.filter(status=JobItem.Status.SUCCEEDED).count()
    results.append(("work was done", done > 0, f"{done} users succeeded"))
    holding = JobItem.objects.filter(status__in=JobItem.ACTIVE).values("job_id").distinct().count()
    results.append(
        ("no finished job holds pending or running items", holding == 0, f"{holding} jobs hold some")
    )

    results.extend(fault_free(jobs, cancelled, hostile))
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


def fault_free(jobs, cancelled: set[int], hostile: dict[str, str]) -> list[tuple[str, bool, str]]:
    """No job fails, and no user fails or is cancelled, because of an injected fault: only jobs the
    suite cancelled end cancelled, with cancelled users; only hostile users fail, in LLM jobs."""
    from jobs.models import Job, JobItem

    failed = list(jobs.filter(status=Job.Status.FAILED).values_list("id", "error"))
    unasked = list(
        jobs.filter(status=Job.Status.CANCELLED).exclude(id__in=cancelled).values_list("id", flat=True)
    )
    items = JobItem.objects.exclude(status=JobItem.Status.SUCCEEDED)
    cancelled_users = items.filter(status=JobItem.Status.CANCELLED).exclude(job_id__in=cancelled)
    wrongly_failed = items.filter(status=JobItem.Status.FAILED).exclude(
        job__extractor="llm", user_id__in=list(hostile)
    )
    tried = JobItem.objects.filter(job__extractor="llm", user_id__in=list(hostile)).exclude(
        job_id__in=cancelled
    )
    hostile_done = list(tried.values_list("user_id", "status", "error"))
    unexplained = [(u, s) for u, s, error in hostile_done if s != JobItem.Status.FAILED or not error]
    sample = [f"{u}: {error[:90]}" for u, _, error in hostile_done[:3]]
    return [
        ("no job failed", not failed, f"{len(failed)} failed: {failed[:3]}"),
        (
            "only jobs the suite cancelled ended cancelled",
            not unasked,
            f"{len(unasked)} others: {unasked[:5]}",
        ),
        (
            "no user was cancelled in a job the suite did not cancel",
            not cancelled_users.exists(),
            f"{cancelled_users.count()} users",
        ),
        (
            "no user failed but the hostile ones in LLM jobs",
            not wrongly_failed.exists(),
            "; ".join(
                f"{u} (job {j}): {e[:90]}"
                for u, j, e in wrongly_failed.values_list("user_id", "job_id", "error")[:3]
            )
            or "none",
        ),
        (
            "each hostile user in an LLM job failed alone, with its error",
            not unexplained,
            f"{len(hostile_done)} tried, {len(unexplained)} not failed with an error {unexplained[:3]}; "
            + "; ".join(sample),
        ),
    ]


def told_and_scheduled(
    receiver: SigningChecked, schedule_id: int, active_seconds: float
) -> list[tuple[str, bool, str]]:
    """The promises to others: every ended job announced, signed, with its final status (a message
    id always with the same body, however often it came); each due minute started at most one job,
    and each job the schedule started has its run recorded. A schedule active for 150 s in all
    came due at least twice: it must have run (a shorter run may have had its minutes cut by
    faults)."""
    from django.db.models import Count

    from jobs.models import Job, ScheduleRun

    results = []
    with receiver.lock:
        verified = list(receiver.verified)
    forged = [str(payload) for _, _, payload in verified if isinstance(payload, Exception)]
    bodies: dict[str, set[bytes]] = defaultdict(set)
    announced: dict[int, set[str]] = defaultdict(set)
    for message_id, body, payload in verified:
        if not isinstance(payload, Exception):
            bodies[message_id].add(body)
            announced[payload["data"]["job"]["id"]].add(payload["type"])
    ended = Job.objects.filter(status__in=Job.FINISHED).values_list("id", "status")
    unannounced = [job_id for job_id, status in ended if f"job.{status}" not in announced[job_id]]
    results.append(
        (
            "every ended job was announced, signed, with its final status",
            bool(verified) and not unannounced and not forged,
            f"{len(verified)} requests, {len(bodies)} messages for {len(ended)} ended jobs; "
            f"not announced: {unannounced[:5]}; failing verification: {forged[:2]}",
        )
    )
    changed = [message_id for message_id, seen in bodies.items() if len(seen) > 1]
    results.append(
        (
            "a message sent again kept its id and its bytes",
            not changed,
            f"{len(verified) - len(bodies)} sent again; {len(changed)} changed: {changed[:3]}",
        )
    )
    runs = ScheduleRun.objects.filter(schedule_id=schedule_id)
    twice = list(runs.values("due_at").annotate(n=Count("id")).filter(n__gt=1).values_list("due_at", "n"))
    started = runs.filter(outcome=ScheduleRun.Outcome.STARTED).count()
    jobs = Job.objects.filter(schedule_id=schedule_id).count()
    outcomes = Counter(runs.values_list("outcome", flat=True))
    results.append(
        (
            "each due minute of the schedule started at most one job, each job with its run",
            (runs.exists() or active_seconds < 150) and not twice and started == jobs,
            f"active {active_seconds:.0f} s, {runs.count()} runs "
            f"({', '.join(f'{k} × {n}' for k, n in sorted(outcomes.items()))}), "
            f"{jobs} jobs; due times run twice: {twice[:3]}",
        )
    )
    return results


def setup_database(pg, args) -> str:
    """The suite's database on its own server, migrated, with sample users; Django set up on it."""
    url = pg.create_database("eventproject_chaos")
    os.environ["DATABASE_URL"] = url
    os.environ["DEAD_PEER_SECONDS"] = str(DEAD_PEER_SECONDS)
    os.environ["WEBHOOKS_ALLOW_PRIVATE_ADDRESSES"] = "1"  # the receiver's endpoint is made here
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


def hostile_users(seed: int) -> dict[str, str]:
    """A few sample users (drawn by the seed), each answered with one hostile kind."""
    from extraction.models import UserProfile

    users = sorted(UserProfile.objects.values_list("user_id", flat=True))
    return dict(zip(random.Random(seed).sample(users, len(HOSTILE_KINDS)), HOSTILE_KINDS, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="time faults are injected (all phases)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed)")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--brokers", default="orm,redis", help="phases, each on its own broker")
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
    from tests.own_servers import PostgresServer, RedisServer
    from tests.partition import NetworkNamespace, namespaces_available

    if why := namespaces_available():
        if os.environ.get("REQUIRE_NETNS") == "1":  # .ci/run: partitions must be tried there
            raise SystemExit(f"chaos: partitions cannot be injected here ({why}); REQUIRE_NETNS=1")
        print(f"chaos: no partitions in this run ({why})", flush=True)
    with contextlib.ExitStack() as servers:
        ns = None if why else servers.enter_context(NetworkNamespace())
        reachable = [ns] if ns else []
        pg = servers.enter_context(PostgresServer(reachable_from=reachable))
        redis_server = (
            servers.enter_context(RedisServer(reachable_from=reachable)) if "redis" in brokers else None
        )
        setup_database(pg, args)
        hostile = hostile_users(args.seed)
        log_dir = Path(os.environ.get("CHAOS_LOG_DIR") or f"/tmp/eventproject-chaos-{args.seed}")
        log_dir.mkdir(parents=True, exist_ok=True)
        chaos = Chaos(args, log_dir, pg, redis_server, ns, hostile)
        try:
            for broker in brokers:
                chaos.phase(broker, args.seconds / len(brokers))
        finally:
            chaos.stop_clusters()
            chaos._thaw_all()
            if chaos.also:
                chaos.also.shutdown()
            chaos._receiver_listening(False)
            chaos.server.__exit__(None, None, None)
        return report(chaos, brokers, log_dir)


def report(chaos: Chaos, brokers: list[str], log_dir: Path) -> int:
    """Print what was done and every invariant; 1 if any broke."""
    from jobs.models import Job

    args = chaos.args
    results = check(chaos.server.fake, chaos.cancelled, chaos.hostile)
    results += told_and_scheduled(chaos.receiver, chaos.schedule.id, chaos.schedule_seconds)
    print(
        f"\nchaos run, seed {args.seed}: {args.seconds:g} s of faults over {', '.join(brokers)} "
        f"on PostgreSQL and Redis servers of its own, {args.clusters} clusters × 2 workers "
        f"(cluster 0 in a network namespace: {'yes' if chaos.ns else 'no'}), lease {LEASE} s, "
        f"DEAD_PEER_SECONDS {DEAD_PEER_SECONDS}, {args.users} sample users; cluster logs in {log_dir}"
    )
    print(
        "injected: " + (", ".join(f"{name} × {n}" for name, n in sorted(chaos.faults.items())) or "nothing")
    )
    print(
        "actions:  " + (", ".join(f"{name} × {n}" for name, n in sorted(chaos.actions.items())) or "nothing")
    )
    outcomes = Counter(Job.objects.values_list("status", flat=True))
    print(f"clusters that exited by themselves (started again): {chaos.exits}")
    print("jobs:     " + ", ".join(f"{status} × {n}" for status, n in sorted(outcomes.items())))
    print(
        "recovery, from a fault's end until the work flowed again (a user committed) and until every "
        "job active then committed again, median / max (over the injections whose figure ended "
        "before the next fault began):"
    )

    def shown(values: list[float]) -> str:
        return f"{statistics.median(values):5.1f} / {max(values):5.1f} s" if values else "      (none)    "

    for fault, (count, flowed, every) in sorted(chaos.recoveries().items()):
        print(
            f"  {fault:<15} flowed {shown(flowed)} ({len(flowed)} of {count}), "
            f"every job {shown(every)} ({len(every)} of {count})"
        )
    for promise, held, detail in results:
        print(f"  {'held  ' if held else 'BROKEN'}  {promise}: {detail}")
    return 0 if all(held for _, held, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
