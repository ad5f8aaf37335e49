"""A job's own changes of status (queued → running → completed, cancelling, failed, reopened) and
the sweeps of a stopped job's items; see the package's docstring for the rules every one keeps."""

import uuid
from collections.abc import Collection
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from eventproject.db import DatabaseNow

from ..models import Job, JobItem
from ..webhook_events import JOB_CANCELLED, JOB_COMPLETED, JOB_FAILED, job_event_record

JOBS, ITEMS = Job._meta.db_table, JobItem._meta.db_table
PENDING, RUNNING = JobItem.Status.PENDING.value, JobItem.Status.RUNNING.value
SUCCEEDED, FAILED = JobItem.Status.SUCCEEDED.value, JobItem.Status.FAILED.value


# Jobs ----------------------------------------------------------------------------------------------
def job_mark_running(job_id: int) -> bool:
    """queued → running, when a worker first takes it (again, after a resume). Its share of the
    workers starts level with the running jobs' (see jobs.worker.scheduler): a job that was not
    competing earns no credit for it."""
    competing = Job.objects.filter(status=Job.Status.RUNNING).exclude(id=job_id).order_by()
    level = Subquery(competing.values("status").annotate(low=Min("virtual_time")).values("low")[:1])
    return bool(
        Job.objects.filter(id=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING,
            started_at=Coalesce(F("started_at"), timezone.now()),
            virtual_time=Greatest(F("virtual_time"), Coalesce(level, 0.0)),
        )
    )


def job_complete_empty(job: Job) -> bool:
    """queued → completed at once: a job over nobody has nothing to do."""
    with transaction.atomic():
        if Job.objects.filter(id=job.id, status=Job.Status.QUEUED, total_items=0).update(
            status=Job.Status.COMPLETED, started_at=job.created_at, finished_at=job.created_at
        ):
            job_event_record(job.id, JOB_COMPLETED)
            return True
    return False


def job_finish_if_done(job_id: int) -> str | None:
    """running with no active items → completed; cancelling with none running → cancelled, its
    pending items cancelled in the same transaction (a stopped job never keeps any). Returns the
    status it reached, if it reached one."""
    now = timezone.now()
    active = JobItem.objects.filter(job_id=OuterRef("pk"), status__in=JobItem.ACTIVE)
    running = JobItem.objects.filter(job_id=OuterRef("pk"), status=JobItem.Status.RUNNING)
    with transaction.atomic():
        if (
            Job.objects.filter(id=job_id, status=Job.Status.RUNNING)
            .filter(~Exists(active))
            .update(status=Job.Status.COMPLETED, finished_at=now)
        ):
            job_event_record(job_id, JOB_COMPLETED)
            return Job.Status.COMPLETED
    with transaction.atomic():
        if (
            Job.objects.filter(id=job_id, status=Job.Status.CANCELLING)
            .filter(~Exists(running))
            .update(status=Job.Status.CANCELLED, finished_at=now)
        ):
            items_pending_cancel(job_id)
            job_event_record(job_id, JOB_CANCELLED)
            return Job.Status.CANCELLED
    return None


def job_cancel_request(job_id: int) -> bool:
    """queued | running → cancelling, its pending items cancelled at once; the chunks being
    extracted finish and keep their work (job_finish_if_done ends it when none is left)."""
    with transaction.atomic():
        if not Job.objects.filter(id=job_id, status__in=Job.WORKING).update(status=Job.Status.CANCELLING):
            return False
        items_pending_cancel(job_id)
    return True


def job_fail(job_id: int, message: str, *, release_token: uuid.UUID | None = None) -> bool:
    """queued | running → failed, for a job-level error (bad configuration, fail-fast, the token
    cap): its pending items are cancelled. `release_token` cancels the caller's own claimed items
    too; chunks still running elsewhere cancel theirs when they commit (items_released_sweep)."""
    now = timezone.now()
    with transaction.atomic():
        applied = Job.objects.filter(id=job_id, status__in=Job.WORKING).update(
            status=Job.Status.FAILED, error=message[:10_000], finished_at=now
        )
        if applied:
            items_pending_cancel(job_id)
        if release_token is not None:
            released = JobItem.objects.filter(
                claim_token=release_token, status=JobItem.Status.RUNNING
            ).update(status=JobItem.Status.CANCELLED, finished_at=now, lease_expires_at=None)
            _counters_add(job_id, cancelled_items=released)
        if applied:
            job_event_record(job_id, JOB_FAILED)
    return bool(applied)


def job_reopen(job: Job, *, options: dict[str, Any]) -> int:
    """cancelled | failed → queued, its cancelled items pending again (those whose users are not in
    another active job meanwhile); returns how many, 0 when none could be (then nothing changed).

    The job's row is locked first, as every commit locks it: a chunk of the stopped job still
    committing either cancels its users before we look (and we take them back) or sees the job
    queued again and keeps them; it cannot cancel users behind our back. Raises IntegrityError when
    another start or resume took one of these users at the same moment."""
    with transaction.atomic():
        if not Job.objects.select_for_update().filter(id=job.id, status__in=Job.STOPPED).exists():
            return 0
        elsewhere = JobItem.objects.filter(user_id=OuterRef("user_id"), status__in=JobItem.ACTIVE)
        resumed = (
            items_resumable(job)
            .filter(~Exists(elsewhere))
            .update(status=JobItem.Status.PENDING, finished_at=None, retry_at=None, attempts=0, error="")
        )
        if not resumed:
            return 0
        # Unless prune_jobs began deleting its items meanwhile (it marks the job first).
        if not Job.objects.filter(id=job.id, status__in=Job.STOPPED, items_pruned_at__isnull=True).update(
            status=Job.Status.QUEUED,
            options=options,
            finished_at=None,
            error="",
            error_streak=0,
            error_streak_kind="",
            error_streak_message="",
            cancelled_items=F("cancelled_items") - resumed,
        ):
            transaction.set_rollback(True)
            return 0
    return resumed


def items_resumable(job: Job) -> QuerySet[JobItem]:
    """The job's cancelled items, which a resume puts back to work."""
    return JobItem.objects.filter(job=job, status=JobItem.Status.CANCELLED)


# Items of a stopped job ------------------------------------------------------------------------------
def items_pending_cancel(job_id: int) -> int:
    """pending → cancelled, for every pending item of the job (in the caller's transaction)."""
    cancelled = JobItem.objects.filter(job_id=job_id, status=JobItem.Status.PENDING).update(
        status=JobItem.Status.CANCELLED, finished_at=timezone.now(), retry_at=None
    )
    _counters_add(job_id, cancelled_items=cancelled)
    return cancelled


def items_released_sweep(job_id: int, owned: Collection[int]) -> int:
    """The job was cancelled or failed while a chunk ran: the users its commit put back to work
    (pending, or interrupted) are cancelled instead, for a stopped job keeps none. Never for a job
    resumed meanwhile (queued or running again): its users are its own again."""
    back = Q(status=JobItem.Status.PENDING) | Q(status=JobItem.Status.RUNNING, claim_token__isnull=True)
    swept = JobItem.objects.filter(back, id__in=owned).update(
        status=JobItem.Status.CANCELLED, finished_at=timezone.now(), retry_at=None, lease_expires_at=None
    )
    _counters_add(job_id, cancelled_items=swept)
    return swept


def items_stopped_sweep(job_id: int) -> int:
    """pending, and running with a lease run out → cancelled, in a job that does not run (left by a
    dead worker, or by older versions); healing calls it. The job's row is locked as a resume locks
    it: a resume committing meanwhile makes the job queued before we look, never after."""
    stale = Q(status=JobItem.Status.PENDING) | Q(
        status=JobItem.Status.RUNNING, lease_expires_at__lt=DatabaseNow()
    )
    with transaction.atomic():
        stopped = Job.objects.select_for_update().filter(id=job_id).exclude(status__in=Job.WORKING)
        if not stopped.exists():
            return 0
        cancelled = JobItem.objects.filter(stale, job_id=job_id).update(
            status=JobItem.Status.CANCELLED, finished_at=timezone.now(), lease_expires_at=None, retry_at=None
        )
        _counters_add(job_id, cancelled_items=cancelled)
    return cancelled


def _counters_add(job_id: int, **counts: int) -> None:
    if moved := {name: F(name) + count for name, count in counts.items() if count}:
        Job.objects.filter(id=job_id).update(**moved)
