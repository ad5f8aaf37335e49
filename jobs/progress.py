"""Where a job stands: one typed value, read from the database alone (exact after any crash), that
every reader renders — the API and its streams, the predecessor's endpoint, the admin, the console.

ProgressState is what a poll reads in one small statement: everything progress shows apart from
figures the clock derives. Its tag (the API's ETag, the stream's event id) changes exactly when one
of them does. Progress adds the rates and the most common errors, read only when the tag changed,
and derives the rest (percent, pending, ETA…) in one place.
"""

import hashlib
import json
import math
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, IntegerField, Min, OuterRef, Subquery
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from eventproject.db import DatabaseNow, is_postgresql
from extraction.extractors import UnknownExtractor, extractor_class
from extraction.llm_budget import budget_holds

from .models import Drain, Job, JobItem, percent_done
from .worker.control import budget_caller

CURRENT_USERS_SHOWN = 20
THROUGHPUT_WINDOW = timedelta(minutes=1)
# Throughput looks at no more than this many recent finishes: enough for a stable rate, and the
# query stays small however fast the job runs.
THROUGHPUT_SAMPLE = 2000
TOP_ERRORS = 5
TOP_ERRORS_SAMPLE = 10_000
WAITING_FOR_WORKER, WAITING_FOR_PROVIDER = "worker", "provider_limit"


@dataclass(frozen=True)
class ProgressState:
    """What a job's progress shows apart from what the clock derives; read in one statement."""

    status: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    running: int
    current_user_ids: list[str]
    priority: int  # its weight among the running jobs (Job.Priority)
    max_workers: int | None
    workers: int  # drains serving it now
    waiting_for: str | None  # WAITING_FOR_WORKER, WAITING_FOR_PROVIDER, or None
    event_count: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    llm: dict[str, Any] | None
    error: str
    started_at: datetime | None
    finished_at: datetime | None

    def tag(self) -> str:
        """A short hash of the state: equal tags, equal progress but for the clock's figures."""
        values = [getattr(self, field.name) for field in fields(ProgressState)]
        return hashlib.sha1(json.dumps(values, default=str, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def finished(self) -> int:
        """Users done with, one way or another: succeeded, failed or cancelled."""
        return self.processed + self.cancelled

    @property
    def left(self) -> int:
        """Users not finished yet: pending or running."""
        return max(self.total - self.finished, 0)

    @property
    def pending(self) -> int:
        return max(self.left - self.running, 0)

    @property
    def percent(self) -> float:
        return percent_done(self.processed, self.total)

    @property
    def activity(self) -> str:
        """What the job is doing or waiting for, in a phrase a person reads."""
        if self.waiting_for == WAITING_FOR_PROVIDER:
            return _("held back by the provider's limit")
        if self.waiting_for == WAITING_FOR_WORKER:
            return _("waiting for a worker")
        if self.workers:
            return ngettext("running on %(n)s worker", "running on %(n)s workers", self.workers) % {
                "n": self.workers
            }
        return ""


@dataclass(frozen=True)
class Progress(ProgressState):
    """A job's whole progress, as every reader shows it."""

    id: int
    extractor: str
    chunk_size: int
    created_at: datetime
    throughput_per_second: float  # users finished per second over the last minute
    top_errors: list[dict[str, Any]]
    now: datetime

    @property
    def total_batches(self) -> int:
        return math.ceil(self.total / self.chunk_size) if self.chunk_size else 0

    @property
    def current_batch(self) -> int:
        return min(
            math.ceil(self.processed / self.chunk_size) + (1 if self.running else 0), self.total_batches
        )

    @property
    def estimated_seconds_remaining(self) -> int | None:
        rate = self.throughput_per_second
        return round(self.left / rate) if rate and self.left else None

    @property
    def elapsed_seconds(self) -> float | None:
        return elapsed_seconds(self.started_at, self.finished_at, self.now)

    @property
    def average_per_second(self) -> float:
        """Users processed over the elapsed time (at least a second): the job's average rate."""
        return self.processed / max(self.elapsed_seconds or 0.0, 1.0)


def elapsed_seconds(started_at: datetime | None, finished_at: datetime | None, now: datetime) -> float | None:
    """How long a job has run (or ran), to the tenth of a second; None before it started."""
    if not started_at:
        return None
    return round(((finished_at or now) - started_at).total_seconds(), 1)


def job_progress_state(job_id: int) -> tuple[Job, ProgressState] | None:
    """A job and its ProgressState in one small statement (None: no such job): the job's row, the
    count of its running items and the first of their users, and its live drains.

    Cheap enough for every poll: a client whose copy is current (same tag) is answered from this
    alone, and job_progress(), with its rates and top errors, runs only when something changed.
    """
    running = JobItem.objects.filter(job_id=OuterRef("pk"), status=JobItem.Status.RUNNING)
    drains = Drain.objects.filter(
        job_id=OuterRef("pk"), seen_at__gte=DatabaseNow(-settings.JOBS_DRAIN_STALE_SECONDS)
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
            running_now=_count(running),
            running_ids=RawSQL(ids, (JobItem.Status.RUNNING, CURRENT_USERS_SHOWN)),
            workers_now=_count(drains),
        )
        .first()
    )
    if job is None:
        return None
    running_count = (job.running_now or 0) if job.is_active else 0
    ids = job.running_ids if running_count else []
    workers = (job.workers_now or 0) if job.is_active else 0
    llm = job_service(job)
    state = ProgressState(
        status=job.status,
        total=job.total_items,
        succeeded=job.succeeded_items,
        failed=job.failed_items,
        cancelled=job.cancelled_items,
        running=running_count,
        current_user_ids=json.loads(ids) if isinstance(ids, str) else list(ids or []),
        priority=job.priority,
        max_workers=job.max_workers,
        workers=workers,
        waiting_for=_waiting_for(job, workers, running_count, calls_out=llm is not None),
        event_count=job.event_count,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        reasoning_tokens=job.reasoning_tokens,
        llm=llm,
        error=job.error,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
    return job, state


def _count(queryset) -> Subquery:
    """A correlated COUNT(*) subquery over rows of a job."""
    return Subquery(
        queryset.order_by().values("job_id").annotate(n=Count("id")).values("n"), output_field=IntegerField()
    )


def _waiting_for(job: Job, workers: int, running: int, *, calls_out: bool) -> str | None:
    """A working job whose workers wait for the provider's budget (`calls_out`: its extractor
    calls a provider) waits for the provider's limit; one with users left and no worker serving
    it waits for a worker."""
    if calls_out and workers and job.status in Job.WORKING and budget_holds(budget_caller(job.id)):
        return WAITING_FOR_PROVIDER
    if (
        job.status in Job.WORKING
        and not workers
        and job.total_items > job.succeeded_items + job.failed_items + job.cancelled_items + running
    ):
        return WAITING_FOR_WORKER
    return None


def job_progress(job: Job, *, now: datetime | None = None, state: ProgressState | None = None) -> Progress:
    """Where a job stands. `state`: its ProgressState, when the caller read it already (with `job`,
    in job_progress_state); else both are read now. At most four small queries, whatever the job's
    size."""
    if state is None:
        found = job_progress_state(job.id)
        if found is None:
            raise Job.DoesNotExist(f"job {job.id}")
        job, state = found
    now = now or timezone.now()
    rate = _throughput(job, now) if job.status == Job.Status.RUNNING else 0.0
    return Progress(
        **{field.name: getattr(state, field.name) for field in fields(ProgressState)},
        id=job.id,
        extractor=job.extractor,
        chunk_size=job.chunk_size,
        created_at=job.created_at,
        throughput_per_second=round(rate, 2),
        top_errors=_top_errors(job) if job.failed_items else [],
        now=now,
    )


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
