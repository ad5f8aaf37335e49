"""Integration: jobs run by real qcluster processes on the test database (SQLite or PostgreSQL)."""

import os
import signal
from collections import Counter

import pytest
from django.core.management import call_command

from extraction.models import ExtractedEvent, ExtractionState
from jobs.models import Job
from jobs.services import job_cancel, job_counters_reconcile, job_start
from tests.cluster import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# 8 drain tasks: more than one cluster holds at once (2 running + 2 prefetched), so two share.
CLUSTER_ENV = {"Q_WORKERS": "2", "JOBS_LEASE_SECONDS": "2", "JOBS_DRAIN_TASKS": "8"}


@pytest.fixture
def clusters(clusters, settings):
    """Clusters with short leases and many drain tasks; this process starts and resumes jobs too."""
    settings.JOBS_LEASE_SECONDS = int(CLUSTER_ENV["JOBS_LEASE_SECONDS"])
    settings.JOBS_DRAIN_TASKS = int(CLUSTER_ENV["JOBS_DRAIN_TASKS"])
    return lambda **env: clusters(**{**CLUSTER_ENV, **env})


def finished(job):
    job.refresh_from_db()
    return job.status in Job.FINISHED


def calls(path):
    """How often each user was extracted, and by which worker processes."""
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return Counter(user_id for user_id, _ in lines), {pid for _, pid in lines}


def test_a_job_completes_on_a_real_cluster(clusters):
    call_command("generate_sample_data", users=150, verbosity=0)
    cluster = clusters()
    job = job_start(chunk_size=20)
    wait_for(lambda: finished(job), timeout=60, what=f"job to finish; cluster said:\n{cluster.output()}")
    assert (job.status, job.succeeded_items, job.failed_items) == ("completed", 150, 0)
    assert job.event_count == ExtractedEvent.objects.count() > 150
    assert ExtractionState.objects.filter(status="succeeded").count() == 150
    assert job_counters_reconcile(job.id) == {}


def chunks_reported(clusters, make_users, tmp_path, option: str) -> tuple[object, list[list[str]]]:
    """A job of the test extractor on a real cluster, whose workers write a line for each chunk to
    the file its `option` names: the cluster and the lines, split into words."""
    make_users(20)
    cluster = clusters()
    path = tmp_path / option
    job = job_start(extractor="test", chunk_size=5, options={option: str(path)})
    wait_for(lambda: finished(job), timeout=60, what=f"job to finish; cluster said:\n{cluster.output()}")
    return cluster, [line.split() for line in path.read_text().splitlines()]


def test_workers_find_the_extractors_imported_before_they_forked(clusters, make_users, tmp_path):
    """The cluster imports every configured extractor before its workers fork: none pays for the
    import at its first chunk (the LLM extractor's: a third of a second)."""
    cluster, chunks = chunks_reported(clusters, make_users, tmp_path, "imports_file")
    assert chunks and {importer for _, importer in chunks} == {str(cluster.process.pid)}
    assert str(cluster.process.pid) not in {worker for worker, _ in chunks}


def test_workers_collect_garbage_rarely_and_never_read_what_the_cluster_made(clusters, make_users, tmp_path):
    """A chunk makes many objects that reference counting frees: the workers' cyclic garbage
    collector runs every 50,000 allocations, not 700, and never reads the objects of the modules
    the cluster loaded before they forked (Django, the apps, the extractors: about 170,000)."""
    from jobs.management.commands.qcluster import COLLECTOR_THRESHOLDS

    cluster, chunks = chunks_reported(clusters, make_users, tmp_path, "collector_file")
    assert chunks and str(cluster.process.pid) not in {pid for pid, _, _ in chunks}
    assert {int(threshold) for _, threshold, _ in chunks} == {COLLECTOR_THRESHOLDS[0]} == {50_000}
    assert min(int(frozen) for _, _, frozen in chunks) > 10_000


def test_a_cluster_with_an_extractor_it_cannot_import_stops_at_its_start(clusters):
    cluster = clusters(EXTRACTION_EXTRA_EXTRACTORS="gone=tests.extractors.Missing")
    wait_for(lambda: cluster.process.poll() is not None, timeout=60, what="the cluster to stop")
    assert cluster.process.returncode != 0
    assert "cannot import extractor 'tests.extractors.Missing'" in cluster.output()


def job_under_way(calls_file) -> Job:
    """A job over everyone, in chunks of 5 users of 10 ms each (each call written to calls_file),
    once the running clusters have committed 40 of its users."""
    job = job_start(
        extractor="test", chunk_size=5, options={"calls_file": str(calls_file), "seconds_per_user": 0.01}
    )
    wait_for(lambda: Job.objects.get(id=job.id).succeeded_items >= 40, timeout=60, what="some progress")
    return job


def test_a_killed_cluster_is_resumed_and_every_user_committed_once(clusters, make_users, tmp_path):
    ids = make_users(300)
    calls_file = tmp_path / "calls.txt"
    first = clusters()
    job = job_under_way(calls_file)
    first.kill()
    job.refresh_from_db()
    assert job.status == "running" and job.succeeded_items < 300

    # A new cluster rings the job as it starts, and takes over the dead drains' places and chunks.
    clusters()
    wait_for(lambda: finished(job), timeout=60, what="the resumed job to finish")

    assert (job.status, job.succeeded_items, job.failed_items, job.cancelled_items) == (
        "completed",
        300,
        0,
        0,
    )
    assert (
        sorted(ExtractedEvent.objects.values_list("user_id", flat=True)) == ids
    )  # one event each, no doubles
    assert ExtractionState.objects.filter(status="succeeded").count() == 300
    assert job_counters_reconcile(job.id) == {}
    extracted, _ = calls(calls_file)
    assert set(extracted) == set(ids)
    # Only chunks in flight when the cluster died were extracted twice (2 workers x 5 users).
    assert sum(n - 1 for n in extracted.values()) <= 10


def test_cancel_stops_a_running_job_within_seconds_and_keeps_finished_work(clusters, make_users, tmp_path):
    make_users(400)
    clusters()
    job = job_start(extractor="test", chunk_size=5, options={"seconds_per_user": 0.01})
    wait_for(lambda: Job.objects.get(id=job.id).succeeded_items >= 20, timeout=60, what="some progress")
    job_cancel(job)
    wait_for(lambda: finished(job), timeout=5, what="the job to be cancelled")
    assert job.status == "cancelled"
    assert 20 <= job.succeeded_items < 400
    assert job.succeeded_items + job.cancelled_items == 400
    assert ExtractedEvent.objects.count() == job.succeeded_items
    assert not job.items.filter(status__in=["pending", "running"]).exists()
    assert job_counters_reconcile(job.id) == {}


def test_two_clusters_at_once_never_process_a_user_twice(clusters, make_users, tmp_path):
    ids = make_users(400)
    calls_file = tmp_path / "calls.txt"
    for cluster in (clusters(), clusters()):
        wait_for(lambda c=cluster: "running." in c.output(), timeout=30, what="the clusters to start")
    job = job_start(
        extractor="test", chunk_size=5, options={"calls_file": str(calls_file), "seconds_per_user": 0.005}
    )
    wait_for(lambda: finished(job), timeout=90, what="the job to finish")
    assert (job.status, job.succeeded_items) == ("completed", 400)
    extracted, workers = calls(calls_file)
    assert sorted(extracted) == ids
    assert set(extracted.values()) == {1}
    # Both clusters took part: each has two worker processes.
    assert len(workers) >= 3


def test_a_job_runs_on_the_redis_broker_when_redis_url_is_set(clusters, make_users):
    import subprocess
    import sys
    import uuid

    from django_q.models import OrmQ

    from tests.cluster import ROOT, test_database_url

    ids = make_users(60)
    redis = {"REDIS_URL": "redis://127.0.0.1:6379/0", "Q_CLUSTER_NAME": f"test-{uuid.uuid4().hex[:8]}"}
    clusters(**redis)
    subprocess.run(
        [sys.executable, "manage.py", "extract", "--detach", "--extractor", "test", "--chunk-size", "10"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": test_database_url(), **redis},
        check=True,
        capture_output=True,
    )
    job = Job.objects.get()
    wait_for(lambda: finished(job), timeout=60, what="the job to finish through Redis")
    assert (job.status, job.succeeded_items) == ("completed", len(ids))
    assert not OrmQ.objects.exists()  # the database queue was never used


# Recovery after faults (the failure model) ---------------------------------------------------------
def pids_of(path, users=None):
    """Worker processes that extracted (these) users, from a calls file."""
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [int(pid) for user_id, pid in lines if users is None or user_id in users]


def test_pending_users_flow_again_soon_after_a_new_cluster_starts(clusters, make_users, tmp_path, settings):
    """The only cluster dies; nothing may wait for its chunks' leases (60 s here) to run out."""
    settings.JOBS_LEASE_SECONDS = 60
    make_users(400)
    settings.JOBS_DRAIN_TASKS = 4  # all held by the cluster that dies: none left in the queue
    env = {"JOBS_LEASE_SECONDS": "60", "JOBS_DRAIN_TASKS": "4"}
    first = clusters(**env)
    job = job_start(extractor="test", chunk_size=5, options={"seconds_per_user": 0.01})
    wait_for(lambda: Job.objects.get(id=job.id).succeeded_items >= 40, timeout=60, what="some progress")
    first.kill()
    killed_at = Job.objects.get(id=job.id).succeeded_items
    clusters(**env)
    wait_for(
        lambda: Job.objects.get(id=job.id).succeeded_items > killed_at + 20,
        timeout=30,  # half the lease: only the new cluster's ring can explain progress
        what="pending users to flow again",
    )


def test_a_frozen_workers_chunk_is_taken_over_and_its_late_commit_refused(
    clusters, make_users, tmp_path, settings
):
    """SIGSTOP a worker past its lease, then SIGCONT: its chunk is done once elsewhere, within the
    lease and a few seconds, and the frozen worker's commit is fenced off."""
    lease = 6
    settings.JOBS_LEASE_SECONDS = lease
    ids = make_users(20)
    calls_file = tmp_path / "calls.txt"
    cluster = clusters(JOBS_LEASE_SECONDS=str(lease), JOBS_DRAIN_TASKS="2")
    job = job_start(
        extractor="test", chunk_size=10, options={"calls_file": str(calls_file), "seconds_per_user": 0.2}
    )
    first_chunk = ids[:10]
    frozen = wait_for(lambda: pids_of(calls_file, first_chunk), timeout=30, what="the first chunk")[0]
    assert frozen in cluster.pids()
    os.kill(frozen, signal.SIGSTOP)
    try:
        # The other worker ends its chunk in 2 s and finds nothing it may claim until the lease ends.
        wait_for(lambda: finished(job), timeout=lease + 15 + 5, what="the frozen chunk to be done elsewhere")
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert (job.status, job.succeeded_items) == ("completed", 20)
    wait_for(lambda: "lost to an expired lease" in cluster.output(), timeout=30, what="the late commit")
    assert sorted(ExtractedEvent.objects.values_list("user_id", flat=True)) == ids
    assert job_counters_reconcile(job.id) == {}


def test_a_job_gets_all_its_drains_back_after_a_cluster_dies_on_redis(clusters, make_users, tmp_path):
    """Redis loses a killed cluster's drain tasks; the job must not go on with fewer workers."""
    import uuid

    from eventproject.db import DatabaseNow
    from jobs.models import Drain

    make_users(6000)  # 6,000 × 50 ms: longer than the test, so that four drains always have work
    calls_file = tmp_path / "calls.txt"
    redis = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "Q_CLUSTER_NAME": f"test-{uuid.uuid4().hex[:8]}",
        "JOBS_DRAIN_TASKS": "4",
        "JOBS_DRAIN_STALE_SECONDS": "3",
    }
    first, second = clusters(**redis), clusters(**redis)
    job = job_start(
        user_ids=None,
        extractor="test",
        chunk_size=5,
        options={"calls_file": str(calls_file), "seconds_per_user": 0.05},
        enqueue=False,
    )
    # Not rung from here (this process's broker is the database): the clusters' healing rings it.
    live = Drain.objects.filter(job=job, seen_at__gte=DatabaseNow(-3))
    wait_for(lambda: live.count() == 4, timeout=30, what="four drains at work")
    first.kill()
    third = clusters(**redis)
    wait_for(lambda: set(pids_of(calls_file)) & third.pids(), timeout=30, what="the new cluster to take part")
    wait_for(lambda: live.count() == 4, timeout=30, what="four drains at work again")
    assert second.process.poll() is None


def test_a_stop_that_hangs_then_a_sigkill_loses_nothing(clusters, make_users, tmp_path):
    """A process manager's stop: SIGTERM (here to the whole group, which can hang django-q2), then
    SIGKILL after its timeout. A new cluster finishes the job; nobody is committed twice."""
    ids = make_users(300)
    calls_file = tmp_path / "calls.txt"
    cluster = clusters()
    job = job_under_way(calls_file)
    cluster.stop_group(timeout=5)
    clusters()
    wait_for(lambda: finished(job), timeout=90, what="the job to finish on the new cluster")
    assert (job.status, job.succeeded_items, job.failed_items) == ("completed", 300, 0)
    assert sorted(ExtractedEvent.objects.values_list("user_id", flat=True)) == ids
    assert job_counters_reconcile(job.id) == {}
    extracted, _ = calls(calls_file)
    assert set(extracted) == set(ids)
    assert sum(n - 1 for n in extracted.values()) <= 10  # only the chunks in flight (2 workers × 5)


def test_a_stopped_cluster_commits_its_chunks_in_flight_and_exits_at_once(clusters, make_users, tmp_path):
    """SIGTERM to the main process (systemctl stop or restart): django-q2 waits for each worker's
    task, and a drain used to claim chunk after chunk for its whole budget (240 s) or until the job
    ended, so a busy cluster was always killed at the stop timeout. Now its chunks stop, commit
    what they did, and the cluster exits; a new cluster finishes the job, nobody twice."""
    ids = make_users(300)
    calls_file = tmp_path / "calls.txt"
    cluster = clusters()
    job = job_start(
        extractor="test", chunk_size=5, options={"calls_file": str(calls_file), "seconds_per_user": 0.1}
    )
    wait_for(lambda: Job.objects.get(id=job.id).succeeded_items >= 20, timeout=60, what="some progress")
    cluster.terminate()
    cluster.process.wait(timeout=10)  # 300 users of 0.1 s on 2 workers: 15 s of work were left
    job.refresh_from_db()
    assert job.status == "running" and job.succeeded_items < 250
    assert not job.items.filter(status="running").exists()  # what was claimed is committed or back
    clusters(JOBS_HEAL_SECONDS="0.5")
    wait_for(lambda: finished(job), timeout=60, what="the job to finish on the next cluster")
    assert (job.status, job.succeeded_items, job.failed_items) == ("completed", 300, 0)
    assert sorted(ExtractedEvent.objects.values_list("user_id", flat=True)) == ids
    extracted, _ = calls(calls_file)
    assert all(n == 1 for n in extracted.values())  # nobody extracted twice: nothing was cut
