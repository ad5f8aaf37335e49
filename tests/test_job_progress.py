from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from extraction.extractors import make_extractor
from jobs.models import Job, JobItem
from jobs.progress import job_progress
from jobs.services import job_start
from jobs.transitions import job_mark_running
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim

pytestmark = pytest.mark.django_db


def test_it_reports_a_running_job_from_the_tables(make_users, running_job, django_assert_max_num_queries):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        job = running_job(make_users(7), error="bad", permanent=True, fail_users=["u002"])
        process_one_chunk(job, make_extractor("test", job.options))  # u001 ok, u002 failed
        clock.shift(10)
        process_one_chunk(job, make_extractor("test", job.options))  # u003, u004 ok
        clock.shift(10)
        chunk_claim(job)  # u005, u006 running
        job.refresh_from_db()
        with django_assert_max_num_queries(4):
            progress = job_progress(job)
    assert {
        k: getattr(progress, k)
        for k in (
            "status",
            "total",
            "processed",
            "succeeded",
            "failed",
            "cancelled",
            "pending",
            "running",
            "percent",
            "current_batch",
            "total_batches",
            "current_user_ids",
            "event_count",
            "error",
        )
    } == {
        "status": "running",
        "total": 7,
        "processed": 4,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "pending": 1,
        "running": 2,
        "percent": 57.14,
        "current_batch": 3,
        "total_batches": 4,
        "current_user_ids": ["u005", "u006"],
        "event_count": 3,
        "error": "",
    }
    # 4 items finished in the 20 s since the job started.
    assert progress.throughput_per_second == 0.2
    assert progress.estimated_seconds_remaining == 15
    assert progress.elapsed_seconds == 20.0
    assert progress.top_errors == [{"error": "bad", "count": 1}]


def test_throughput_counts_only_the_last_minute(make_users):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        job = job_start(user_ids=make_users(4), extractor="test", chunk_size=2, enqueue=False)
        job_mark_running(job.id)
        process_one_chunk(job, make_extractor("test"))
        clock.shift(120)
        process_one_chunk(job, make_extractor("test"))
        clock.shift(30)
        job.refresh_from_db()
        progress = job_progress(job)
    assert progress.throughput_per_second == round(2 / 60, 2)
    assert progress.status == "running"  # the last worker has not looked yet


def test_a_finished_job_shows_no_rate_and_full_bar(make_users):
    from jobs.worker.drain import job_drain

    job = job_start(user_ids=make_users(3), extractor="test", enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    progress = job_progress(job)
    assert (progress.status, progress.percent, progress.throughput_per_second) == (
        "completed",
        100.0,
        0,
    )
    assert progress.estimated_seconds_remaining is None
    assert progress.current_user_ids == [] and progress.running == 0


def test_an_empty_job_is_complete(db):
    progress = job_progress(job_start())
    assert (progress.total, progress.percent, progress.total_batches) == (0, 100.0, 0)


def test_the_most_common_errors_come_first(make_users):
    job = job_start(user_ids=make_users(5), extractor="test", enqueue=False)
    JobItem.objects.filter(user_id__in=["u001", "u002", "u003"]).update(status="failed", error="timeout")
    JobItem.objects.filter(user_id="u004").update(status="failed", error="bad json")
    Job.objects.filter(id=job.id).update(failed_items=4)
    assert job_progress(job).top_errors == [
        {"error": "timeout", "count": 3},
        {"error": "bad json", "count": 1},
    ]


def test_eta_is_unknown_before_anything_finished(make_users):
    job = job_start(user_ids=make_users(2), extractor="test", enqueue=False)
    job_mark_running(job.id)
    job.refresh_from_db()
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        progress = job_progress(job)
    assert (progress.throughput_per_second, progress.estimated_seconds_remaining) == (0, None)
