"""Cancel, resume, retry the failed users, and the periodic healing of stalled jobs."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from eventproject.db import DatabaseNow
from extraction.extractors import make_extractor
from extraction.services import chunk_extract
from jobs.errors import JobConflict, JobInvalid, JobStateError
from jobs.healing import jobs_heal
from jobs.models import Drain, Job, JobItem
from jobs.services import (
    job_cancel,
    job_counters_reconcile,
    job_resume,
    job_retry_failed,
    job_run_here,
    job_start,
)
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim
from jobs.worker.commit import chunk_commit
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


def test_cancel_stops_pending_users_at_once_and_keeps_finished_work(running_job, make_users):
    job = running_job(make_users(6))
    extractor = make_extractor("test")
    process_one_chunk(job, extractor)  # u001, u002 done
    claim = chunk_claim(job)  # u003, u004 being worked on
    job = job_cancel(job)
    assert job.status == "cancelling"
    assert dict(job.items.values_list("user_id", "status")) == {
        "u001": "succeeded",
        "u002": "succeeded",
        "u003": "running",
        "u004": "running",
        "u005": "cancelled",
        "u006": "cancelled",
    }
    chunk_commit(
        claim, job, chunk_extract(user_ids=claim.user_ids, extractor=extractor), extractor
    )  # the running chunk still commits
    job_drain(job.id)  # and the next worker to look finds nothing running
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.cancelled_items) == ("cancelled", 4, 2)
    assert job.finished_at
    assert job_counters_reconcile(job.id) == {}


def test_a_job_without_running_items_is_cancelled_at_once(running_job, make_users):
    job = job_cancel(running_job(make_users(3)))
    assert (job.status, job.cancelled_items) == ("cancelled", 3)


def test_a_finished_job_cannot_be_cancelled(running_job, make_users):
    job = running_job(make_users(1))
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(
        JobStateError, match=f"job {job.id} is completed; only queued or running jobs can be cancelled"
    ):
        job_cancel(job)


def test_resume_puts_cancelled_users_back_to_work(
    running_job, make_users, django_capture_on_commit_callbacks
):
    job = running_job(make_users(4))
    process_one_chunk(job, make_extractor("test"))
    job = job_cancel(job)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_resume(job)
    assert (job.status, job.cancelled_items, job.finished_at) == ("queued", 0, None)
    assert OrmQ.objects.count() == 1
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 4)


def test_resume_leaves_users_that_joined_another_job(running_job, make_users):
    job = job_cancel(running_job(make_users(3)))
    other = job_start(user_ids=["u002"], enqueue=False)
    job = job_resume(job)
    assert dict(job.items.values_list("user_id", "status")) == {
        "u001": "pending",
        "u002": "cancelled",
        "u003": "pending",
    }
    assert other.items.get().status == "pending"
    assert job_counters_reconcile(job.id) == {}


def test_a_failed_job_resumes_after_the_cause_is_fixed(running_job, make_users):
    job = running_job(make_users(3), fatal="bad key")
    job_drain(job.id)
    Job.objects.filter(id=job.id).update(options={})  # e.g. the key was fixed
    job.refresh_from_db()
    job = job_resume(job)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.error, job.succeeded_items) == ("completed", "", 3)


def test_resume_is_refused_when_there_is_nothing_to_resume(running_job, make_users):
    job = running_job(make_users(1))
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(JobStateError, match="is completed"):
        job_resume(job)


def test_retry_failed_starts_a_child_job_over_the_failed_users(running_job, make_users):
    job = running_job(make_users(4), error="boom", permanent=True, fail_users=["u002", "u004"])
    job_drain(job.id)
    job.refresh_from_db()
    retry = job_retry_failed(job)
    assert (retry.parent_id, retry.total_items, retry.extractor) == (job.id, 2, "test")
    assert retry.selection == {"mode": "retry_failed", "parent": job.id}
    assert sorted(retry.items.values_list("user_id", flat=True)) == ["u002", "u004"]
    with pytest.raises(JobConflict):
        job_retry_failed(job)  # those users are now busy in the retry


def test_users_a_retry_extracted_are_not_retried_again(running_job, make_users):
    """The retry button stayed, and a second press re-ran (and, with the LLM, paid for) users the
    first retry had extracted. Only those it did not are offered again (here: its cancelled one)."""
    job = running_job(make_users(3), error="boom", permanent=True, fail_users=["u001", "u002", "u003"])
    job_drain(job.id)
    job.refresh_from_db()
    retry = job_retry_failed(job)
    JobItem.objects.filter(job=retry, user_id="u003").update(status="cancelled")  # cancelled early
    JobItem.objects.filter(job=retry).exclude(user_id="u003").update(status="succeeded")
    Job.objects.filter(id=retry.id).update(status="cancelled")
    assert job.can_retry
    again = job_retry_failed(job)
    assert list(again.items.values_list("user_id", flat=True)) == ["u003"]
    JobItem.objects.filter(job=again).update(status="succeeded")
    Job.objects.filter(id=again.id).update(status="completed")
    assert not job.can_retry
    with pytest.raises(JobStateError, match="has no failed users"):
        job_retry_failed(job)


def test_retry_failed_takes_every_failed_user_beyond_the_limit_on_typed_lists(
    failing_job, make_users, settings, api
):
    """JOBS_MAX_USER_IDS bounds the lists people send; a retry's users come from the job itself."""
    users = make_users(5)
    job = failing_job(users, users)
    settings.JOBS_MAX_USER_IDS = 3
    retry = job_retry_failed(job)
    assert (retry.total_items, retry.items.count()) == (5, 5)
    job_cancel(retry)
    answer = api("operator").post(f"/api/v1/jobs/{job.id}/retry-failed/")
    assert answer.status_code == 201 and answer.json()["total_items"] == 5, answer.json()


def test_retry_failed_needs_a_finished_job_with_failures(running_job, make_users):
    job = running_job(make_users(2))
    with pytest.raises(JobStateError, match="once it has finished"):
        job_retry_failed(job)
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(JobStateError, match="has no failed users"):
        job_retry_failed(job)


def test_reconcile_counts_inside_its_transaction_so_a_commit_before_it_is_not_undone(
    running_job, make_users, monkeypatch
):
    """A chunk commits as `job_status --reconcile` begins on a running job: the recount must not
    write counts taken before that commit over the commit's own (it counted before its transaction
    and its lock). That the lock then keeps later commits out is the database's part, not run here."""
    from django.db import transaction

    import jobs.services

    job = running_job(make_users(4))
    real_atomic = transaction.atomic
    first = [True]

    def a_chunk_commits_first(*args, **kwargs):  # as the recount opens its transaction
        if first.pop() if first else False:
            process_one_chunk(job, make_extractor("test"))
        return real_atomic(*args, **kwargs)

    monkeypatch.setattr(jobs.services.transaction, "atomic", a_chunk_commits_first)
    job_counters_reconcile(job.id)
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.succeeded_items == JobItem.objects.filter(job=job, status="succeeded").count() == 2


def test_a_job_run_here_and_cancelled_ends_though_a_dead_drain_held_a_chunk(running_job, make_users):
    """extract --sync with no cluster left to heal: the chunk a cluster's drain took before it died
    is cancelled once its lease runs out, as healing would, instead of being waited for forever."""
    job = running_job(make_users(4))
    chunk_claim(job)  # a cluster's drain took u001 and u002, then died
    JobItem.objects.filter(job=job, status="running").update(lease_expires_at=DatabaseNow(0.5))
    assert job_cancel(job).status == "cancelling"
    ended = job_run_here(job)
    assert (ended.status, ended.cancelled_items) == ("cancelled", 4)


def test_resume_with_a_token_cap_is_refused_while_the_job_works_and_for_an_unknown_extractor(
    running_job, make_users
):
    job = running_job(make_users(2))
    with pytest.raises(JobStateError, match="a new token cap is given when a stopped job resumes"):
        job_resume(job, max_total_tokens=1000)
    job_cancel(job)
    Job.objects.filter(id=job.id).update(extractor="gone")  # no longer configured
    job.refresh_from_db()
    with pytest.raises(JobInvalid, match="max_total_tokens: unknown extractor 'gone'"):
        job_resume(job, max_total_tokens=1000)


def test_healing_rings_a_job_nobody_works_on_once_per_quiet_period(
    running_job, make_users, django_capture_on_commit_callbacks
):
    job = running_job(make_users(3))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]
    assert OrmQ.objects.count() == 4
    OrmQ.objects.update(lock=timezone.now() + timedelta(hours=1))  # taken by a cluster, not started
    assert jobs_heal() == []  # the bell was just rung: those drains may be on their way
    assert jobs_heal(force=True) == [f"job {job.id}: 0 live drains, rang 4 more"]  # `resume_jobs`


def test_a_cluster_starting_beside_another_rings_no_surplus_drains(
    running_job, make_users, django_capture_on_commit_callbacks
):
    """Two clusters starting together used to ring a job's drains twice; the surplus waited in the
    busy clusters' prefetch while a new cluster idled."""
    from jobs.management.commands.qcluster import heal_while

    job = running_job(make_users(3))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]  # the first cluster
    with django_capture_on_commit_callbacks(execute=True):
        once = iter([True])
        heal_while(lambda: next(once, False))  # the second, starting at the same moment
    assert OrmQ.objects.count() == 4  # its workers take those waiting


def test_a_cluster_starting_rings_short_jobs_at_once_as_many_drains_in_all_as_it_has_workers(
    running_job, make_users, settings, django_capture_on_commit_callbacks
):
    """Jobs whose only cluster was just killed: their drain tasks went with it. The new cluster's
    idle workers get drains at once, however recently the jobs were rung (the recovery bench: 11 s,
    not 1); as many as it has workers, in all, since a drain serves whichever job is due."""
    from jobs.management.commands.qcluster import heal_while

    settings.Q_WORKERS = 2
    running_job(make_users(3))
    running_job(make_users(3, prefix="v"))
    with django_capture_on_commit_callbacks(execute=True):
        jobs_heal()
    OrmQ.objects.all().delete()  # taken by the cluster that was killed
    with django_capture_on_commit_callbacks(execute=True):
        once = iter([True])
        heal_while(lambda: next(once, False))
    assert OrmQ.objects.count() == 2
    assert jobs_heal() == []  # then as any heal: once the bell went unanswered


def test_healing_rings_no_more_drains_while_tasks_wait_for_a_worker(
    running_job, make_users, settings, django_capture_on_commit_callbacks
):
    """A task waiting in the queue means no worker is free: more drains would only lengthen it."""
    settings.JOBS_DRAIN_STALE_SECONDS = 10
    job = running_job(make_users(3))
    with django_capture_on_commit_callbacks(execute=True):
        jobs_heal()
    Job.objects.filter(id=job.id).update(bell_rung_at=DatabaseNow(-3600))
    assert jobs_heal() == []
    OrmQ.objects.update(lock=timezone.now() + timedelta(hours=1))  # taken by a busy cluster's pusher
    assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]


def test_healing_rings_a_short_job_again_each_quiet_period_while_no_task_waits(
    running_job, make_users, settings, django_capture_on_commit_callbacks
):
    """Drains rung into a busy cluster's prefetch (django-q2's pusher takes tasks ahead of its
    workers) wait there for a drain's budget. Ringing again each quiet period while nothing waits in
    the queue reaches a free worker within a few heals, not after a growing backoff."""
    settings.JOBS_DRAIN_STALE_SECONDS = 10
    job = running_job(make_users(3))
    for _ in range(4):
        Job.objects.filter(id=job.id).update(bell_rung_at=DatabaseNow(-9))
        assert jobs_heal() == []  # rung within the quiet period: its drains may be on their way
        Job.objects.filter(id=job.id).update(bell_rung_at=DatabaseNow(-11))
        with django_capture_on_commit_callbacks(execute=True):
            assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]
        OrmQ.objects.update(lock=timezone.now() + timedelta(hours=1))  # prefetched, not started


def test_healing_rings_only_the_drains_a_job_lacks(running_job, make_users):
    job = running_job(make_users(3))
    for _ in range(3):
        Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow())
    assert jobs_heal() == [f"job {job.id}: 3 live drains, rang 1 more"]
    Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow())
    assert jobs_heal(force=True) == []  # at full strength


def test_healing_rings_for_a_dead_workers_chunk_once_its_lease_expired(
    running_job, make_users, expire_leases
):
    job = running_job(make_users(2))
    chunk_claim(job)  # then the worker dies: no drain beats for it
    assert jobs_heal() == []  # its lease is still live: nothing to claim
    expire_leases(job)
    assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]


def test_healing_finishes_a_running_job_with_nothing_left(running_job, make_users):
    job = running_job(make_users(1))
    JobItem.objects.update(status="succeeded")
    Job.objects.filter(id=job.id).update(succeeded_items=1)
    assert jobs_heal() == [f"job {job.id}: nothing left, now completed"]


def test_healing_cancels_items_a_dead_worker_left_in_a_stopped_job(running_job, make_users, expire_leases):
    job = running_job(make_users(2))
    chunk_claim(job)
    job_cancel(job)
    assert jobs_heal() == []  # the chunk may still commit
    expire_leases(job)
    assert jobs_heal() == [
        f"job {job.id}: cancelled 2 items a stopped job still held",
        f"job {job.id}: nothing left, now cancelled",
    ]
    job.refresh_from_db()
    assert (job.status, job.cancelled_items) == ("cancelled", 2)


def test_the_migrations_leave_no_every_minute_schedule_behind():
    """Clusters heal by themselves now; 0003 removes the schedule 0002 installed."""
    from importlib import import_module

    from django.apps import apps
    from django_q.models import Schedule

    import_module("jobs.migrations.0002_resume_schedule").install(apps, None)
    import_module("jobs.migrations.0003_heal_in_clusters").uninstall(apps, None)
    assert not Schedule.objects.filter(func="jobs.tasks.resume_stalled_jobs").exists()
