"""Cancel, resume, retry the failed users, and the periodic healing of stalled jobs."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from extraction.extractors import make_extractor
from extraction.services import chunk_extract
from jobs.engine import chunk_claim, chunk_commit, job_drain, process_one_chunk
from jobs.models import Job, JobItem
from jobs.services import (
    JobConflict,
    JobStateError,
    job_cancel,
    job_counters_reconcile,
    job_mark_running,
    job_resume,
    job_retry_failed,
    job_start,
    jobs_resume_stalled,
)

pytestmark = pytest.mark.django_db


def started(users, **kwargs):
    job = job_start(user_ids=users, extractor="test", chunk_size=2, enqueue=False, **kwargs)
    job_mark_running(job.id)
    job.refresh_from_db()
    return job


def test_cancel_stops_pending_users_at_once_and_keeps_finished_work(make_users):
    job = started(make_users(6))
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
    outcomes = {u.user_id: (u, r) for u, r in chunk_extract(user_ids=claim.user_ids, extractor=extractor)}
    chunk_commit(claim, job, outcomes, extractor)  # the running chunk still commits
    job_drain(job.id)  # and the next worker to look finds nothing running
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.cancelled_items) == ("cancelled", 4, 2)
    assert job.finished_at
    assert job_counters_reconcile(job.id) == {}


def test_a_job_without_running_items_is_cancelled_at_once(make_users):
    job = job_cancel(started(make_users(3)))
    assert (job.status, job.cancelled_items) == ("cancelled", 3)


def test_a_finished_job_cannot_be_cancelled(make_users):
    job = started(make_users(1))
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(
        JobStateError, match=f"job {job.id} is completed; only queued or running jobs can be cancelled"
    ):
        job_cancel(job)


def test_resume_puts_cancelled_users_back_to_work(make_users, django_capture_on_commit_callbacks):
    job = started(make_users(4))
    process_one_chunk(job, make_extractor("test"))
    job = job_cancel(job)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_resume(job)
    assert (job.status, job.cancelled_items, job.finished_at) == ("queued", 0, None)
    assert OrmQ.objects.count() == 1
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 4)


def test_resume_leaves_users_that_joined_another_job(make_users):
    job = job_cancel(started(make_users(3)))
    other = job_start(user_ids=["u002"], enqueue=False)
    job = job_resume(job)
    assert dict(job.items.values_list("user_id", "status")) == {
        "u001": "pending",
        "u002": "cancelled",
        "u003": "pending",
    }
    assert other.items.get().status == "pending"
    assert job_counters_reconcile(job.id) == {}


def test_a_failed_job_resumes_after_the_cause_is_fixed(make_users):
    job = started(make_users(3), options={"fatal": "bad key"})
    job_drain(job.id)
    Job.objects.filter(id=job.id).update(options={})  # e.g. the key was fixed
    job.refresh_from_db()
    job = job_resume(job)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.error, job.succeeded_items) == ("completed", "", 3)


def test_resume_is_refused_when_there_is_nothing_to_resume(make_users):
    job = started(make_users(1))
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(JobStateError, match="is completed"):
        job_resume(job)


def test_retry_failed_starts_a_child_job_over_the_failed_users(make_users):
    job = started(make_users(4), options={"error": "boom", "permanent": True, "fail_users": ["u002", "u004"]})
    job_drain(job.id)
    job.refresh_from_db()
    retry = job_retry_failed(job)
    assert (retry.parent_id, retry.total_items, retry.extractor) == (job.id, 2, "test")
    assert retry.selection == {"mode": "retry_failed", "parent": job.id}
    assert sorted(retry.items.values_list("user_id", flat=True)) == ["u002", "u004"]
    with pytest.raises(JobConflict):
        job_retry_failed(job)  # those users are now busy in the retry


def test_retry_failed_needs_a_finished_job_with_failures(make_users):
    job = started(make_users(2))
    with pytest.raises(JobStateError, match="once it has finished"):
        job_retry_failed(job)
    job_drain(job.id)
    job.refresh_from_db()
    with pytest.raises(JobStateError, match="has no failed users"):
        job_retry_failed(job)


def test_resume_stalled_rings_for_a_job_nobody_works_on(make_users, django_capture_on_commit_callbacks):
    job = started(make_users(3))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_resume_stalled() == [f"job {job.id}: re-enqueued 4 drain tasks"]
    assert OrmQ.objects.count() == 4
    assert jobs_resume_stalled() == []  # the bell was just rung


def test_resume_stalled_leaves_a_job_with_live_workers(make_users):
    job = started(make_users(3))
    chunk_claim(job)
    assert jobs_resume_stalled() == []


def test_resume_stalled_rings_once_leases_expired(make_users):
    job = started(make_users(2))
    chunk_claim(job)
    later = timezone.now() + timedelta(seconds=61)
    assert jobs_resume_stalled(now=later) == [f"job {job.id}: re-enqueued 4 drain tasks"]


def test_resume_stalled_finishes_a_running_job_with_nothing_left(make_users):
    job = started(make_users(1))
    JobItem.objects.update(status="succeeded")
    Job.objects.filter(id=job.id).update(succeeded_items=1)
    assert jobs_resume_stalled() == [f"job {job.id}: nothing left, now completed"]


def test_resume_stalled_cancels_items_a_dead_worker_left_in_a_stopped_job(make_users):
    job = started(make_users(2))
    chunk_claim(job)
    job_cancel(job)
    later = timezone.now() + timedelta(seconds=61)
    assert jobs_resume_stalled(now=later) == [
        f"job {job.id}: cancelled 2 items left running by a stopped worker"
    ]
    job.refresh_from_db()
    assert (job.status, job.cancelled_items) == ("cancelled", 2)


def test_the_migration_installs_the_every_minute_resume_schedule_once():
    from importlib import import_module

    from django.apps import apps
    from django_q.models import Schedule

    migration = import_module("jobs.migrations.0002_resume_schedule")
    Schedule.objects.all().delete()  # a transactional test may have flushed it
    migration.install(apps, None)
    migration.install(apps, None)
    schedule = Schedule.objects.get(name="resume stalled jobs")
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        "jobs.tasks.resume_stalled_jobs",
        "I",
        1,
        -1,
    )
