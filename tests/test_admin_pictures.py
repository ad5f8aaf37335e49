"""The admin's pictures: throughput over time and the outcome mix of a job, a user's timeline with
its events as spans, events counted by type and category; the selectors that feed them."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from extraction.models import ExtractedEvent
from extraction.overview import event_counts
from jobs.models import Job, JobItem
from jobs.selectors import CHART_MAX_INTERVALS, job_outcome_mix, job_throughput_series
from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


def ended_job(user_ids: list[str], *, ago: timedelta, lasted: timedelta) -> Job:
    """A completed job over these users that started `ago` and ran for `lasted` (its items are
    stamped by finished_over)."""
    job = job_start(user_ids=user_ids, enqueue=False)
    start = timezone.now() - ago
    Job.objects.filter(id=job.id).update(
        status="completed", started_at=start, finished_at=start + lasted, succeeded_items=len(user_ids)
    )
    job.refresh_from_db()
    return job


def finished_over(job: Job, seconds: list[float], *, status: str = "succeeded") -> None:
    """Stamp the job's items as finished `seconds` after its start, one item per entry."""
    items = list(job.items.order_by("id").values_list("id", flat=True))
    for item_id, offset in zip(items, seconds, strict=False):
        JobItem.objects.filter(id=item_id).update(
            status=status, finished_at=job.started_at + timedelta(seconds=offset)
        )


def test_the_throughput_series_counts_finishes_per_interval_and_adds_up(make_users):
    job = ended_job(make_users(30), ago=timedelta(seconds=600), lasted=timedelta(seconds=120))
    # 10 users in the first 10 s, none for a while, 20 in the last 10 s.
    finished_over(job, [1] * 10 + [115] * 20)
    series = job_throughput_series(job)
    assert series["step_seconds"] == 2  # 120 s in at most 60 intervals of a readable width
    counts = [point["count"] for point in series["points"]]
    assert len(counts) == 60 and sum(counts) == 30
    assert counts[0] == 10 and counts[57] == 20
    assert series["average"] == pytest.approx(30 / 120)
    assert series["peak"] == pytest.approx(10.0)  # 20 users in one 2 s interval


def test_a_long_job_gets_no_more_than_the_cap_of_intervals_in_one_query(make_users):
    job = ended_job(make_users(5), ago=timedelta(days=30), lasted=timedelta(days=20))
    finished_over(job, [0, 10, 86400 * 5, 86400 * 19, 86400 * 21])  # the last one after the recorded end
    with CaptureQueriesContext(connection) as queries:
        series = job_throughput_series(job)
    assert len(queries) == 1
    assert len(series["points"]) <= CHART_MAX_INTERVALS
    assert sum(point["count"] for point in series["points"]) == 5  # open-ended last interval


def test_a_job_not_started_has_no_series_and_its_mix_comes_from_counters(make_users):
    job = job_start(user_ids=make_users(4), enqueue=False)
    assert job_throughput_series(job)["points"] == []
    Job.objects.filter(id=job.id).update(succeeded_items=1, failed_items=1, cancelled_items=1)
    job.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        mix = job_outcome_mix(job)
    assert len(queries) == 0
    assert {part["outcome"]: part["count"] for part in mix} == {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "left": 1,
    }


def test_the_job_page_draws_throughput_and_outcomes_and_a_finished_jobs_average(client, personas, make_users):
    make_users(6)
    job = job_start(enqueue=False, chunk_size=2)
    job_drain(job.id)
    job.refresh_from_db()
    client.force_login(personas["viewer"])
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert '<svg class="chart chart-throughput"' in page and 'role="img"' in page
    assert page.count('class="chart-bar"') >= 1
    assert '<svg class="chart chart-mix"' in page and "succeeded: 6" in page
    assert 'id="job-average"' in page and "0.0 users/s" not in page.split('id="job-average"')[1][:120]
    assert 'role="progressbar"' in page and 'aria-valuenow="100.0"' in page


def test_the_job_list_bars_carry_their_value_for_screen_readers(client, personas, make_users):
    make_users(2)
    job = job_start(enqueue=False)
    Job.objects.filter(id=job.id).update(succeeded_items=1)
    client.force_login(personas["viewer"])
    page = client.get("/admin/jobs/job/").content.decode()
    assert 'role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="50.0"' in page


def test_a_users_page_draws_its_events_as_spans_over_its_behaviours(client, personas, make_users):
    make_users(1, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    ExtractedEvent.objects.filter(sequence=1).update(context={"keyword": "P7 价格", "count": 2})
    client.force_login(personas["admin"])
    page = client.get("/admin/extraction/userprofile/u001/change/").content.decode()
    timeline = page.split('<svg class="chart chart-timeline"')[1].split("</svg>")[0]
    assert timeline.count('class="timeline-event') == 2
    assert timeline.count('class="timeline-behavior"') == 3
    assert '<a href="#e-1">' in timeline and "keyword=P7 价格" in timeline
    # The context reads as keys and values, not a Python dict.
    assert "<li><b>keyword</b> P7 价格</li>" in page and "{&#x27;keyword&#x27;" not in page


def test_the_users_timeline_shows_only_what_the_viewer_may_see(client, personas, make_users):
    make_users(1, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    client.force_login(personas["viewer"])  # neither behaviours nor events: no profile either
    assert client.get("/admin/extraction/userprofile/u001/change/").status_code == 403
    from django.contrib.auth.models import Permission

    personas["viewer"].user_permissions.add(
        *Permission.objects.filter(codename__in=["view_userprofile", "view_extractedevent"])
    )
    page = client.get("/admin/extraction/userprofile/u001/change/").content.decode()
    timeline = page.split('<svg class="chart chart-timeline"')[1].split("</svg>")[0]
    assert 'class="timeline-event' in timeline and "timeline-behavior" not in timeline


def test_the_events_list_counts_by_type_and_category_of_what_it_selects(client, personas, make_users):
    make_users(3, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    client.force_login(personas["analyst"])
    page = client.get("/admin/extraction/extractedevent/").content.decode()
    assert 'id="event-counts"' in page and "Counts of the 6 events selected" in page
    assert 'aria-label="Events by type"' in page and "purchase: 3" in page
    filtered = client.get("/admin/extraction/extractedevent/", {"category": "conversion"}).content.decode()
    assert "Counts of the 3 events selected" in filtered and "engagement:" not in filtered


def test_event_counts_read_a_bounded_sample_and_say_so(make_users):
    make_users(3, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    counts = event_counts(ExtractedEvent.objects.all(), sample=4)
    assert counts["counted"] == 4 and counts["sampled"]
    counts = event_counts(ExtractedEvent.objects.all())
    assert counts["counted"] == 6 and not counts["sampled"]
    assert dict(counts["by_category"]) == {"conversion": 3, "engagement": 3}
