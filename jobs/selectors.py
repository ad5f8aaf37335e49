"""Reads of the jobs: lists, results, estimates and the pictures' figures. A job's progress is in
jobs.progress."""

import math
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from extraction.extractors import Extractor
from extraction.models import ExtractedEvent, UserProfile
from extraction.selectors import user_inputs_load, users_needing_extraction

from .models import Job, JobItem, Schedule, ScheduleRun
from .progress import elapsed_seconds


def jobs_list(**filters) -> QuerySet[Job]:
    """Jobs newest first, with who started them, filtered by status and extractor (both optional)."""
    return Job.objects.select_related("created_by").filter(**filters).order_by("-id")


def job_items(job: Job, **filters) -> QuerySet[JobItem]:
    """A job's items, filtered by status (optional); the caller orders or pages them."""
    return JobItem.objects.filter(job=job, **filters)


def job_latest(*, active: bool = False) -> Job | None:
    """The newest job, or the newest active one."""
    jobs = Job.objects.filter(status__in=Job.ACTIVE) if active else Job.objects.all()
    return jobs.order_by("-id").first()


def job_results(job: Job, *, at_most: int) -> tuple[dict[str, list[ExtractedEvent]] | None, dict[str, str]]:
    """Every user of a job with the events it extracted, in sequence order (an empty list for none),
    or None when they are more than `at_most`; and the failed users with their errors: a failed
    user's earlier events are kept but are not this job's. For small jobs (the predecessor's
    synchronous extract)."""
    read = list(job_events(job).order_by("user_id", "sequence")[: at_most + 1])  # one read: no race
    if len(read) > at_most:
        return None, job_failures(job)
    events: dict[str, list[ExtractedEvent]] = {
        user_id: [] for user_id in job.items.values_list("user_id", flat=True)
    }
    for event in read:
        events[event.user_id].append(event)
    return events, job_failures(job)


def job_events(job: Job) -> QuerySet[ExtractedEvent]:
    """The events of the users this job extracted (not a failed user's earlier ones)."""
    extracted = job.items.filter(status=JobItem.Status.SUCCEEDED).values("user_id")
    return ExtractedEvent.objects.filter(user_id__in=extracted)


def job_failures(job: Job) -> dict[str, str]:
    """The users this job failed, with their errors."""
    return dict(job.items.filter(status=JobItem.Status.FAILED).values_list("user_id", "error"))


def users_free_to_start(*, everyone: bool = False) -> QuerySet[UserProfile]:
    """The users a job over everyone needing extraction takes (with `everyone`, over every user):
    those not in another active job."""
    active = JobItem.objects.filter(user_id=OuterRef("user_id"), status__in=JobItem.ACTIVE)
    users = UserProfile.objects.all() if everyone else users_needing_extraction()
    return users.filter(~Exists(active))


def job_estimate(
    *, user_ids: list[str] | None, extractor, chunk_size: int = 500, everyone: bool = False
) -> dict[str, int]:
    """What a job over these users (None: everyone needing extraction, or every user) would cost,
    without starting it: users, calls and tokens as the extractor estimates them, reading users a
    chunk at a time."""
    ids: QuerySet[Any, str] | list[str]
    if user_ids is None:
        ids = users_free_to_start(everyone=everyone).values_list("user_id", flat=True)
    else:
        ids = user_ids
    totals = {"users": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
    if type(extractor).estimate is Extractor.estimate:
        # An offline extractor costs nothing: count the users without loading their behaviours.
        totals["users"] = _users_known(ids, chunk_size)
        return totals
    chunk: list[str] = []
    for user_id in ids.iterator(chunk_size=chunk_size) if isinstance(ids, QuerySet) else ids:
        chunk.append(user_id)
        if len(chunk) == chunk_size:
            _estimate_add(totals, extractor, chunk)
            chunk = []
    if chunk:
        _estimate_add(totals, extractor, chunk)
    return totals


def _users_known(user_ids, chunk_size: int) -> int:
    if isinstance(user_ids, QuerySet):  # everyone needing extraction
        return user_ids.count()
    ids = list(dict.fromkeys(user_ids))
    return sum(
        UserProfile.objects.filter(user_id__in=ids[start : start + chunk_size]).count()
        for start in range(0, len(ids), chunk_size)
    )


def _estimate_add(totals: dict[str, int], extractor, user_ids: list[str]) -> None:
    inputs = user_inputs_load(user_ids)
    totals["users"] += len(inputs)
    for key, value in extractor.estimate(inputs).items():
        totals[key] += value


# Pictures of a job --------------------------------------------------------------------------------
# At most this many intervals in the throughput chart: one aggregate query of as many filtered
# counts, one pass over the job's finished items (the jobitem_finished index), whatever its size.
CHART_MAX_INTERVALS = 60
# Interval widths a person reads at a glance, in seconds.
CHART_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def job_throughput_series(job: Job, *, now: datetime | None = None) -> dict[str, Any]:
    """Users finished (succeeded or failed) per second in each interval of the job's run, from
    `finished_at`, counted in the database in one query; at most CHART_MAX_INTERVALS intervals of
    a width from CHART_STEPS. `average` is processed users over the elapsed time (0 before start).
    """
    now = now or timezone.now()
    processed = job.succeeded_items + job.failed_items
    if not job.started_at:
        return {"step_seconds": 0, "started_at": None, "points": [], "average": 0.0, "peak": 0.0}
    end = job.finished_at or now
    span = max((end - job.started_at).total_seconds(), 1.0)
    step = next((s for s in CHART_STEPS if span / s <= CHART_MAX_INTERVALS), None)
    if step is None:  # longer than CHART_STEPS' last × the cap: whole days
        step = 86400 * math.ceil(span / 86400 / CHART_MAX_INTERVALS)
    count = math.ceil(span / step)
    edges = [job.started_at + timedelta(seconds=step * i) for i in range(count + 1)]
    finished = JobItem.objects.filter(job_id=job.id, finished_at__isnull=False, status__in=JobItem.PROCESSED)
    # The first and last intervals are open-ended, so the series adds up to every processed item
    # even where a worker's clock stamped one a little outside the job's start and end.
    bounds = [Q(finished_at__gte=edges[i]) if i else Q() for i in range(count)]
    bounds = [
        bound & Q(finished_at__lt=edges[i + 1]) if i < count - 1 else bound for i, bound in enumerate(bounds)
    ]
    counts = finished.aggregate(
        **{f"i{i}": Count("id", filter=bound) if bound else Count("id") for i, bound in enumerate(bounds)}
    )
    points = []
    for i in range(count):
        width = max(min(step, (end - edges[i]).total_seconds()), 1.0)  # the last one may be shorter
        points.append(
            {"at": edges[i], "seconds": step * i, "count": counts[f"i{i}"], "rate": counts[f"i{i}"] / width}
        )
    elapsed = elapsed_seconds(job.started_at, job.finished_at, now)  # as progress shows it: one average
    return {
        "step_seconds": step,
        "started_at": job.started_at,
        "points": points,
        "average": processed / max(elapsed or 0.0, 1.0),  # (started: elapsed is a number)
        "peak": max((p["rate"] for p in points), default=0.0),
    }


def job_outcome_mix(job: Job) -> list[dict[str, Any]]:
    """The job's users by outcome, from its counters (no item is read)."""
    left = max(job.total_items - job.succeeded_items - job.failed_items - job.cancelled_items, 0)
    return [
        {"outcome": "succeeded", "count": job.succeeded_items},
        {"outcome": "failed", "count": job.failed_items},
        {"outcome": "cancelled", "count": job.cancelled_items},
        {"outcome": "left", "count": left},
    ]


def schedules_list() -> QuerySet[Schedule]:
    """Schedules by name, each with its latest run (and that run's job) in `latest` (a list of at
    most one): two queries for the whole page."""
    latest = ScheduleRun.objects.select_related("job").order_by("-id")[:1]
    return (
        Schedule.objects.select_related("created_by")
        .prefetch_related(Prefetch("runs", queryset=latest, to_attr="latest"))
        .order_by("name")
    )
