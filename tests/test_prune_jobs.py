"""prune_jobs: the items of jobs finished long ago are deleted in batches; the jobs and their counts
stay, in the admin and the API too; and every cluster does it by itself when JOBS_PRUNE_DAYS is set."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.errors import JobStateError
from jobs.models import Job, JobItem
from jobs.pruning import jobs_prune
from jobs.services import job_cancel, job_counters_reconcile, job_resume, job_retry_failed, job_start
from jobs.transitions import job_mark_running
from jobs.worker.drain import job_drain
from tests.cluster import wait_for

COUNTS = ["status", "total_items", "succeeded_items", "failed_items", "cancelled_items", "event_count"]


def finished(users, *, days_ago: float, **options) -> Job:
    """A job over these users, drained to its end, that finished `days_ago` days ago."""
    job = job_start(user_ids=users, extractor="test", chunk_size=2, enqueue=False, options=options)
    job_drain(job.id)
    Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=days_ago))
    job.refresh_from_db()
    assert job.status in Job.FINISHED
    return job


def counts(job: Job) -> list:
    job.refresh_from_db()
    return [getattr(job, name) for name in COUNTS]


@pytest.mark.django_db
def test_it_deletes_the_items_of_old_finished_jobs_in_batches_and_keeps_their_counts(make_users, run):
    users = make_users(9)
    old = finished(users[:5], days_ago=10, error="boom", fail_users=["u002"], permanent=True)
    recent = finished(users[5:7], days_ago=2)
    active = job_start(user_ids=users[7:], extractor="test", enqueue=False)
    before = {job.id: counts(job) for job in (old, recent, active)}

    with CaptureQueriesContext(connection) as queries:
        out, _ = run("prune_jobs", "--days", "7", "--batch-size", "2")

    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1 items, each batch its own statement
    assert f"job {old.id}: deleted 5 items" in out
    assert "deleted 5 items of 1 jobs finished more than 7 days ago" in out
    assert not JobItem.objects.filter(job=old).exists()
    assert JobItem.objects.filter(job=recent).count() == 2
    assert JobItem.objects.filter(job=active, status="pending").count() == 2
    assert {job.id: counts(job) for job in (old, recent, active)} == before
    assert before[old.id] == ["completed", 5, 4, 1, 0, 4]
    old.refresh_from_db()
    assert old.items_pruned_at is not None and recent.items_pruned_at is None


@pytest.mark.django_db
def test_it_is_idempotent_and_a_dry_run_deletes_nothing(make_users, run):
    job = finished(make_users(3), days_ago=30)

    out, _ = run("prune_jobs", "--days", "7", "--dry-run")
    assert f"job {job.id}: would delete 3 items" in out
    assert "(dry run: nothing deleted)" in out
    assert JobItem.objects.filter(job=job).count() == 3

    assert "deleted 3 items of 1 jobs" in run("prune_jobs", "--days", "7")[0]
    assert run("prune_jobs", "--days", "7")[0] == "deleted 0 items of 0 jobs finished more than 7 days ago\n"
    assert counts(job) == ["completed", 3, 3, 0, 0, 3]


@pytest.mark.django_db
def test_jobs_with_no_items_to_delete_are_not_reported_as_pruned(make_users, run):
    empty = job_start(extractor="test", enqueue=False)  # nobody needs extraction: complete at once
    assert (empty.status, empty.total_items) == ("completed", 0)
    Job.objects.filter(id=empty.id).update(finished_at=timezone.now() - timedelta(days=30))
    job = finished(make_users(2), days_ago=30)

    for args, verb in ((["--dry-run"], "would delete"), ([], "deleted")):
        out, _ = run("prune_jobs", "--days", "7", *args)
        assert f"job {job.id}: {verb} 2 items" in out
        assert f"job {empty.id}:" not in out
        assert f"{verb} 2 items of 1 jobs finished" in out


@pytest.mark.django_db
def test_a_cancelled_job_is_pruned_like_the_others_and_can_no_longer_be_resumed(make_users):
    job = job_start(user_ids=make_users(4), extractor="test", enqueue=False)
    job_mark_running(job.id)
    job = job_cancel(job)
    assert job.status == "cancelled" and job.can_resume
    Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=8))

    assert jobs_prune(days=7).items == {job.id: 4}

    job.refresh_from_db()
    assert (job.cancelled_items, job.can_resume) == (4, False)
    with pytest.raises(JobStateError, match="items were pruned"):
        job_resume(job)


@pytest.mark.django_db
def test_a_pruned_job_is_neither_retried_nor_reconciled(make_users):
    job = finished(make_users(3), days_ago=8, error="boom", permanent=True)
    assert job.can_retry
    jobs_prune(days=7)
    job.refresh_from_db()
    assert not job.can_retry
    with pytest.raises(JobStateError, match="items were pruned"):
        job_retry_failed(job)
    with pytest.raises(JobStateError, match="items were pruned"):
        job_counters_reconcile(job.id)
    with pytest.raises(CommandError, match="items were pruned"):
        call_command("job_status", str(job.id), "--reconcile", stdout=io.StringIO())
    assert counts(job) == ["completed", 3, 0, 3, 0, 0]


@pytest.mark.django_db
def test_a_job_resumed_and_stopped_again_during_a_prune_keeps_its_items(make_users, monkeypatch):
    """The prune chose its jobs at the start: one resumed and stopped again meanwhile finished a
    moment ago, yet lost its items (and its resume) when the prune came to it."""
    from jobs import pruning

    users = make_users(6)
    first = finished(users[:3], days_ago=40)
    second = job_start(user_ids=users[3:], extractor="test", enqueue=False)
    job_cancel(second)
    Job.objects.filter(id=second.id).update(finished_at=timezone.now() - timedelta(days=40))
    delete_batch = pruning._items_delete_batch

    def while_the_first_is_pruned(job_id, size):
        if job_id == first.id and Job.objects.get(id=second.id).finished_at < timezone.now() - timedelta(1):
            job_cancel(job_resume(Job.objects.get(id=second.id)))  # an operator's second thoughts
        return delete_batch(job_id, size)

    monkeypatch.setattr(pruning, "_items_delete_batch", while_the_first_is_pruned)
    assert set(jobs_prune(days=30).items) == {first.id}
    second.refresh_from_db()
    assert (second.items_pruned_at, second.items.count(), second.can_resume) == (None, 3, True)


@pytest.mark.django_db
def test_a_retry_racing_a_prune_is_refused_not_made_over_nobody(make_users, monkeypatch):
    """The retry checked that its parent was not pruned, then read the parent's failed users: a
    prune in between left it "completed" over nobody, with no error."""
    from jobs import services

    old = finished(make_users(4), days_ago=40, error="boom", permanent=True)
    create_for_retry = services._items_create_for_retry

    def pruned_between(job, parent):
        jobs_prune(days=30)  # a cluster's JOBS_PRUNE_DAYS prune
        return create_for_retry(job, parent)

    monkeypatch.setattr(services, "_items_create_for_retry", pruned_between)
    with pytest.raises(JobStateError, match="items were pruned"):
        job_retry_failed(old)
    assert list(Job.objects.values_list("id", flat=True)) == [old.id]


@pytest.mark.django_db
def test_a_pruned_jobs_share_is_history(make_users, api):
    job = finished(make_users(2), days_ago=8)
    Job.objects.filter(id=job.id).update(status="cancelled")  # a stopped job's share may change…
    assert (
        api("operator").patch(f"/api/v1/jobs/{job.id}/", {"max_workers": 3}, format="json").status_code == 200
    )
    jobs_prune(days=7)  # …until its items are gone: it can never run again
    answer = api("operator").patch(f"/api/v1/jobs/{job.id}/", {"max_workers": 2}, format="json")
    assert answer.status_code == 409, answer.json()


@pytest.mark.django_db
def test_a_time_budget_stops_after_a_batch_and_the_next_call_goes_on(make_users):
    job = finished(make_users(5), days_ago=8)

    first = jobs_prune(days=7, batch_size=2, budget_seconds=0)
    assert (first.items, first.done) == ({job.id: 2}, False)
    second = jobs_prune(days=7, batch_size=2)  # the marked job is taken up again
    assert (second.items, second.done) == ({job.id: 3}, True)
    assert jobs_prune(days=7).items == {}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--days", "0"], "--days must be from 1 to 36,500, got 0"),
        (["--days", "1000000"], "--days must be from 1 to 36,500, got 1000000"),  # past the calendar's start
        (["--days", "7", "--batch-size", "0"], "--batch-size must be from 1 to 100,000, got 0"),
        (["--days", "7", "--batch-size", "100001"], "--batch-size must be from 1 to 100,000"),
        ([], "the following arguments are required: --days"),
        (["--days", "week"], "invalid int value: 'week'"),
    ],
)
def test_bad_options_are_refused_saying_why(run, args, error):
    with pytest.raises(CommandError, match=error):
        run("prune_jobs", *args)


@pytest.mark.django_db
def test_the_api_and_the_admin_show_a_pruned_jobs_counts_and_no_items(make_users, api, client, personas):
    job = finished(make_users(3), days_ago=8)
    jobs_prune(days=7)

    reader = api("viewer")
    detail = reader.get(f"/api/v1/jobs/{job.id}/").json()
    assert (detail["total_items"], detail["succeeded_items"], detail["percent"]) == (3, 3, 100.0)
    assert detail["items_pruned_at"] is not None
    assert detail["progress"]["processed"] == 3
    assert reader.get(f"/api/v1/jobs/{job.id}/items/").json()["results"] == []

    client.force_login(personas["viewer"])
    page = client.get(f"/admin/jobs/job/{job.id}/change/")
    assert page.status_code == 200
    assert "Its items were deleted on" in page.content.decode()
    assert client.get(f"/admin/jobs/jobitem/?job={job.id}").status_code == 200


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_cluster_prunes_old_jobs_by_itself_when_jobs_prune_days_is_set(clusters, make_users):
    users = make_users(4)
    old = finished(users[:3], days_ago=8)
    recent = finished(users[3:], days_ago=1)

    cluster = clusters(JOBS_PRUNE_DAYS="7")
    wait_for(
        lambda: not JobItem.objects.filter(job=old).exists(),
        timeout=30,
        what=f"the old job's items to be pruned; cluster said:\n{cluster.output()}",
    )
    assert JobItem.objects.filter(job=recent).count() == 1
    assert counts(old) == ["completed", 3, 3, 0, 0, 3]
