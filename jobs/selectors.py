"""Reads of the job engine. job_progress() is the one progress function everything uses."""

import hashlib
import json
import math
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Exists, IntegerField, Min, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.expressions import RawSQL
from django.utils import timezone

from eventproject.db import is_postgresql
from extraction.extractors import Extractor, UnknownExtractor, extractor_class
from extraction.models import ExtractedEvent, UserProfile
from extraction.selectors import user_inputs_load, users_needing_extraction

from .models import Job, JobItem, Schedule, ScheduleRun

CURRENT_USERS_SHOWN = 20
THROUGHPUT_WINDOW = timedelta(minutes=1)
# Throughput looks at no more than this many recent finishes: enough for a stable rate,
# and the query stays small however fast the job runs.
THROUGHPUT_SAMPLE = 2000
TOP_ERRORS = 5
TOP_ERRORS_SAMPLE = 10_000


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


def job_results(job: Job) -> tuple[dict[str, list[ExtractedEvent]], dict[str, str]]:
    """Every user of a job with its events in sequence order (an empty list for none), and the
    failed users with their errors. For small jobs (the predecessor's synchronous extract)."""
    events: dict[str, list[ExtractedEvent]] = {
        user_id: [] for user_id in job.items.values_list("user_id", flat=True)
    }
    for event in ExtractedEvent.objects.filter(user_id__in=job.items.values("user_id")).order_by(
        "user_id", "sequence"
    ):
        events[event.user_id].append(event)
    failed = dict(job.items.filter(status=JobItem.Status.FAILED).values_list("user_id", "error"))
    return events, failed


def job_progress(
    job: Job, *, now: datetime | None = None, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Where a job stands, from the database alone (exact after any crash).

    Counts come from the job's counters (moved in the same transaction as the items),
    running items and rates from the items themselves. At most four small queries,
    whatever the job's size: the job row is the caller's, refresh it if it may be stale.
    `state`, job_progress_state()'s figures read with that row, saves two of them.
    """
    now = now or timezone.now()
    if state is not None:  # job_progress_state() read the running items with the job
        running, current_user_ids = state["running"], state["current_user_ids"]
    else:  # (as job_progress_state() reads them: keep the two alike)
        running_items = JobItem.objects.filter(job_id=job.id, status=JobItem.Status.RUNNING)
        running = running_items.count() if job.is_active else 0
        current_user_ids = (
            list(running_items.order_by("id").values_list("user_id", flat=True)[:CURRENT_USERS_SHOWN])
            if running
            else []
        )
    processed = job.succeeded_items + job.failed_items
    pending = max(job.total_items - processed - job.cancelled_items - running, 0)
    rate = _throughput(job, now) if job.status == Job.Status.RUNNING else 0.0
    remaining = pending + running
    finished = job.total_items == processed + job.cancelled_items
    return {
        "id": job.id,
        "status": job.status,
        "extractor": job.extractor,
        "total": job.total_items,
        "processed": processed,
        "succeeded": job.succeeded_items,
        "failed": job.failed_items,
        "cancelled": job.cancelled_items,
        "pending": pending,
        "running": running,
        "percent": round(100 * processed / job.total_items, 2)
        if job.total_items
        else (100.0 if finished else 0.0),
        "current_batch": min(
            math.ceil(processed / job.chunk_size) + (1 if running else 0), job.total_batches
        ),
        "total_batches": job.total_batches,
        "current_user_ids": current_user_ids,
        "throughput_per_second": round(rate, 2),
        "estimated_seconds_remaining": round(remaining / rate) if rate and remaining else None,
        "event_count": job.event_count,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "reasoning_tokens": job.reasoning_tokens,
        "llm": state["llm"] if state is not None else job_service(job),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "elapsed_seconds": _elapsed(job, now),
        "error": job.error,
        "top_errors": _top_errors(job) if job.failed_items else [],
    }


# What job_progress() shows, apart from figures derived from the clock (rate, ETA, elapsed): a
# change in any of them changes the progress's tag (the API's ETag, the stream's event id). The
# rest never changes (id, extractor, created_at, chunk_size) or follows from these: pending,
# percent and batches from the counts, top_errors from the failed items, which only ever grow.
PROGRESS_STATE = (
    "status",
    "total",
    "succeeded",
    "failed",
    "cancelled",
    "running",
    "current_user_ids",
    "event_count",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "llm",
    "error",
    "started_at",
    "finished_at",
)


def progress_tag(progress: dict[str, Any]) -> str:
    """A short hash of the PROGRESS_STATE figures of job_progress() or job_progress_state()."""
    state = json.dumps([progress[key] for key in PROGRESS_STATE], default=str)
    return hashlib.sha1(state.encode()).hexdigest()[:20]


def job_progress_state(job_id: int) -> tuple[Job, dict[str, Any]] | None:
    """A job and its PROGRESS_STATE figures in one small statement (None: no such job): the job's
    row, the count of its running items and the first of their users, as job_progress() has them.

    Cheap enough for every poll: a client whose copy is current (same tag) is answered from this
    alone, and job_progress(), with its rates and top errors, runs only when something changed.
    """
    running = JobItem.objects.filter(job_id=OuterRef("pk"), status=JobItem.Status.RUNNING)
    count = Subquery(
        running.order_by().values("job_id").annotate(n=Count("id")).values("n"), output_field=IntegerField()
    )
    table, items = Job._meta.db_table, JobItem._meta.db_table
    first = f"SELECT id, user_id FROM {items} WHERE job_id = {table}.id AND status = %s ORDER BY id LIMIT %s"
    if is_postgresql():  # an array
        ids = f"SELECT array_agg(user_id ORDER BY id) FROM ({first}) AS first_running"
    else:  # a JSON array: SQLite keeps the subquery's order
        ids = f"SELECT json_group_array(user_id) FROM ({first}) AS first_running"
    job = (
        Job.objects.filter(pk=job_id)
        .annotate(
            running_now=count,
            running_ids=RawSQL(ids, (JobItem.Status.RUNNING, CURRENT_USERS_SHOWN)),
        )
        .first()
    )
    if job is None:
        return None
    running_count = (job.running_now or 0) if job.is_active else 0
    ids = job.running_ids if running_count else []
    return job, {
        "status": job.status,
        "total": job.total_items,
        "succeeded": job.succeeded_items,
        "failed": job.failed_items,
        "cancelled": job.cancelled_items,
        "running": running_count,
        "current_user_ids": json.loads(ids) if isinstance(ids, str) else list(ids),
        "event_count": job.event_count,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "reasoning_tokens": job.reasoning_tokens,
        "llm": job_service(job),
        "error": job.error,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def job_service(job: Job) -> dict[str, Any] | None:
    """The remote service the job's extractor calls, as progress shows it: for the LLM extractor,
    the endpoint and model, the format answers are asked in and what was adapted to what they
    accept (one small query); None for an offline extractor."""
    try:
        return extractor_class(job.extractor).service(job.options)
    except UnknownExtractor:  # an extractor no longer configured
        return None


def jobs_throughput(now: datetime | None = None) -> float:
    """Items finished per second over the last minute, summed over every running job."""
    now = now or timezone.now()
    return round(sum(_throughput(job, now) for job in Job.objects.filter(status=Job.Status.RUNNING)), 2)


def _throughput(job: Job, now: datetime) -> float:
    """Items finished per second over the last minute (or over the last THROUGHPUT_SAMPLE finishes)."""
    since = now - THROUGHPUT_WINDOW
    recent = JobItem.objects.filter(
        job_id=job.id, status__in=JobItem.PROCESSED, finished_at__gte=since
    ).order_by("-finished_at")[:THROUGHPUT_SAMPLE]
    sample = recent.aggregate(finished=Count("id"), oldest=Min("finished_at"))
    if not sample["finished"]:
        return 0.0
    if sample["finished"] == THROUGHPUT_SAMPLE:
        window = (now - sample["oldest"]).total_seconds()
    else:
        window = (now - max(since, job.started_at or since)).total_seconds()
    return sample["finished"] / max(window, 1.0)


def _elapsed(job: Job, now: datetime) -> float | None:
    if not job.started_at:
        return None
    return round(((job.finished_at or now) - job.started_at).total_seconds(), 1)


def _top_errors(job: Job) -> list[dict[str, Any]]:
    """The most common errors among (at most the latest TOP_ERRORS_SAMPLE) failed items."""
    latest = JobItem.objects.filter(job_id=job.id, status=JobItem.Status.FAILED).order_by("-id")[
        :TOP_ERRORS_SAMPLE
    ]
    rows = (
        JobItem.objects.filter(id__in=latest.values("id"))
        .values("error")
        .annotate(count=Count("id"))
        .order_by("-count", "error")[:TOP_ERRORS]
    )
    return [{"error": row["error"], "count": row["count"]} for row in rows]


def job_estimate(*, user_ids: list[str] | None, extractor, chunk_size: int = 500) -> dict[str, int]:
    """What a job over these users (None: everyone needing extraction) would cost, without starting
    it: users, calls and tokens as the extractor estimates them, reading users a chunk at a time."""
    if user_ids is None:
        active = JobItem.objects.filter(user_id=OuterRef("user_id"), status__in=JobItem.ACTIVE)
        user_ids = users_needing_extraction().filter(~Exists(active)).values_list("user_id", flat=True)
    totals = {"users": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
    if type(extractor).estimate is Extractor.estimate:
        # An offline extractor costs nothing: count the users without loading their behaviours.
        totals["users"] = _users_known(user_ids, chunk_size)
        return totals
    chunk: list[str] = []
    for user_id in user_ids.iterator(chunk_size=chunk_size) if hasattr(user_ids, "iterator") else user_ids:
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
    elapsed = _elapsed(job, now)  # as the progress card shows it, so both averages agree
    return {
        "step_seconds": step,
        "started_at": job.started_at,
        "points": points,
        "average": processed / max(elapsed, 1.0),
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
