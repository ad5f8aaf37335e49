"""A database server restarted, away for a while, or cut off by a silent partition under a running
job: the job ends completed, nobody failed or cancelled. Each test runs a PostgreSQL server of its
own (tests/own_servers.py), never the machine's."""

import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from django.db import DatabaseError

from eventproject.db import connection_reset
from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import OUTAGE_BACKOFF_SECONDS, _outage_pause
from tests.cluster import ROOT, wait_for
from tests.fake_openai import API_KEY, MODEL

pytestmark = pytest.mark.integration

# Chunks larger than the fail-fast streak: an outage counted against users would fail the job.
SETTINGS = {"JOBS_FAIL_FAST_AFTER": "20", "JOBS_LEASE_SECONDS": "5", "JOBS_HEAL_SECONDS": "1"}
# Twice the leases and the lanes' longest wait between tries: every lease runs out meanwhile.
OUTAGE_SECONDS = 2 * max(int(SETTINGS["JOBS_LEASE_SECONDS"]), OUTAGE_BACKOFF_SECONDS[1])


@pytest.fixture
def llm_job(postgres_database, llm_server, make_users, clusters, settings):
    """llm_job() -> a job of the LLM extractor over 300 users (chunks of 100, each a few seconds of
    calls) on the test's own PostgreSQL server, with a real cluster at work on it."""
    settings.JOBS_FAIL_FAST_AFTER = 20
    make_users(300, behaviors=4)
    llm_server.latency = 0.3
    clusters(
        OPENAI_BASE_URL=llm_server.url,
        OPENAI_API_KEY=API_KEY,
        EXTRACTION_LLM_MODEL=MODEL,
        EXTRACTION_LLM_BACKOFF_SECONDS="0.1",
        **SETTINGS,
    )

    def start() -> Job:
        options = {"max_concurrency": 4, "token_budget": 1200}
        return job_start(extractor="llm", chunk_size=100, options=options)

    return start


def answered(llm_server) -> int:
    return sum(1 for request in llm_server.requests if request.get("status") == 200)


def finished(job_id: int) -> Job | None:
    """The job if it has ended; None while it runs or while this process's connection, ended by
    the restart, is being opened again."""
    try:
        return Job.objects.filter(id=job_id, status__in=Job.FINISHED).first()
    except DatabaseError:
        connection_reset()
        return None


def assert_completed_by_everyone(job_id: int) -> None:
    job = wait_for(lambda: finished(job_id), timeout=180, what="the job to end")
    assert (job.status, job.error) == ("completed", "")
    assert (job.succeeded_items, job.failed_items, job.cancelled_items) == (job.total_items, 0, 0)


def test_a_job_survives_a_restart_of_its_database_server(llm_job, postgres_database, llm_server):
    job = llm_job()
    wait_for(lambda: answered(llm_server) >= 5, timeout=60, what="calls under way")
    postgres_database.restart()  # fast: every session ends at once, as on a real restart
    assert_completed_by_everyone(job.id)


def test_a_job_waits_while_its_database_is_away_and_goes_on_when_it_returns(
    llm_job, postgres_database, llm_server
):
    job = llm_job()
    wait_for(lambda: answered(llm_server) >= 5, timeout=60, what="calls under way")
    postgres_database.stop("fast")
    time.sleep(OUTAGE_SECONDS)  # the fault itself: the database away for this long, every lease run out
    postgres_database.start()
    assert_completed_by_everyone(job.id)


def test_a_cluster_stopped_while_its_database_is_away_exits_without_waiting_out_a_pause(
    postgres_database, make_users, clusters
):
    """After each failed try a lane waits longer, up to OUTAGE_BACKOFF_SECONDS[1]: it slept the
    whole pause before it looked at the stop flag, and `systemctl stop` or a restart while the
    database was away took that much longer. The cluster's broker is Redis (the machine's, left
    alone): on the ORM broker django-q2's pusher, whose pulls fail too, sleeps 10 s before it gives
    up, and django-q2's stop waits for it."""
    make_users(300)
    job = job_start(extractor="test", chunk_size=10, options={"seconds_per_user": 0.05}, enqueue=False)
    broker = {"REDIS_URL": "redis://127.0.0.1:6379/0", "Q_CLUSTER_NAME": f"test-{uuid.uuid4().hex[:8]}"}
    cluster = clusters(**broker, **SETTINGS)  # it rings the job's drains as it starts
    wait_for(lambda: Job.objects.get(id=job.id).succeeded_items >= 10, timeout=60, what="work under way")
    pause = _outage_pause(4)  # the fourth failed try in a row: 4 s
    postgres_database.stop("fast")
    wait_for(
        lambda: f"trying again in {pause:.1f} s" in cluster.output(),
        timeout=60,
        what=f"a lane to pause for {pause} s:\n{cluster.output()}",
    )
    asked = time.monotonic()
    cluster.terminate()
    cluster.process.wait(timeout=30)
    assert time.monotonic() - asked < pause - 1, cluster.output()[-3000:]  # not the pause, then the stop
    postgres_database.start()


# In a process cut off from its database: does a query waiting for its answer give up?
WAITING_QUERY = """
import django, time
django.setup()
from django.db import OperationalError, connection
try:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(60)")  # the test cuts the link while it runs, however late
except OperationalError as exc:
    print(f"gave up at {time.time()}: {type(exc).__name__}", flush=True)
"""


def test_a_query_waiting_for_its_answer_behind_a_silent_partition_gives_up_within_seconds(
    network_namespace,
):
    """The query has reached the server; its answer never comes back (packets dropped, no reset).
    A connection with nothing to send never notices by itself: it would wait for hours. With TCP
    keepalives (DEAD_PEER_SECONDS) it gives up within seconds, and so does the worker's chunk."""
    from tests.own_servers import PostgresServer

    ns = network_namespace
    with PostgresServer(reachable_from=[ns]) as server:
        server.create_database("eventproject")
        env = {"DATABASE_URL": server.url("eventproject", via=ns), "DEBUG": "1", "DEAD_PEER_SECONDS": "6"}
        process = subprocess.Popen(
            ns.command([sys.executable, "-c", WAITING_QUERY]),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: sleeping(server), timeout=30, what="the query to run on the server")
            ns.cut()
            cut_at = time.time()
            out, _ = process.communicate(timeout=60)
        finally:
            ns.heal()
            process.kill()
    # The dead peer is noticed about DEAD_PEER_SECONDS after the cut (twice that: a busy machine may
    # be slow to wake the process), where without keepalives it would wait for hours.
    gave_up = re.fullmatch(r"gave up at ([\d.]+): OperationalError\n", out)
    assert gave_up and float(gave_up[1]) - cut_at <= 2 * int(env["DEAD_PEER_SECONDS"]), (out, cut_at)


def sleeping(server) -> bool:
    import psycopg

    with psycopg.connect(server.url()) as conn:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
        )
        return conn.execute(query).fetchone()[0] > 0
