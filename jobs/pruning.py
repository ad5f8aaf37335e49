"""Pruning: the items of long-finished jobs deleted in short batches, their Job rows and counters kept
(`prune_jobs`, and every cluster between heals when JOBS_PRUNE_DAYS is set)."""

import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from eventproject.db import is_postgresql

from .models import Job, JobItem

PRUNE_BATCH_SIZE = 10_000


@dataclass
class Pruned:
    """What jobs_prune did (or would do): items deleted per job, and whether nothing is left."""

    items: dict[int, int] = field(default_factory=dict)  # job id -> items deleted (none: left out)
    done: bool = True  # False: the time budget ran out with items left to prune

    @property
    def total(self) -> int:
        return sum(self.items.values())


def jobs_prune(
    *,
    days: int,
    batch_size: int = PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    budget_seconds: float | None = None,
) -> Pruned:
    """Delete the items of jobs that finished more than `days` days ago, keeping the Job rows and
    their counters, so a finished job's million items do not stay for ever.

    Each batch of `batch_size` items is one short DELETE (its own transaction: no lock over a whole
    job, and concurrent pruners skip each other's rows). A job is marked `items_pruned_at` before
    its first batch, in a conditional UPDATE that a resume or a retry racing it cannot both pass.
    Idempotent and resumable: a job marked but not emptied (a crash, the `budget_seconds` running
    out) is taken up again by the next call. `dry_run` counts what would go and deletes nothing.
    """
    cutoff = timezone.now() - timedelta(days=days)
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    ended = Q(finished_at__isnull=False, status__in=JobItem.FINISHED)  # the jobitem_finished index
    left = JobItem.objects.filter(ended, job_id=OuterRef("pk"))
    jobs = (
        Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff)
        .filter(Q(items_pruned_at__isnull=True) | Exists(left))
        .order_by("finished_at", "id")
        .values_list("id", flat=True)
    )
    pruned = Pruned()
    for job_id in jobs:
        if dry_run:
            if count := JobItem.objects.filter(ended, job_id=job_id).count():
                pruned.items[job_id] = count
            continue
        marked = Job.objects.filter(id=job_id, status__in=Job.FINISHED, finished_at__lt=cutoff).update(
            items_pruned_at=Coalesce(F("items_pruned_at"), timezone.now())
        )
        if not marked:  # resumed meanwhile (and maybe stopped again since: not old any more)
            continue
        while True:
            deleted = _items_delete_batch(job_id, batch_size)
            if deleted:
                pruned.items[job_id] = pruned.items.get(job_id, 0) + deleted
            if deleted < batch_size:
                break
            if deadline is not None and time.monotonic() >= deadline:  # after a batch: always some progress
                pruned.done = False
                return pruned
    return pruned


def _items_delete_batch(job_id: int, batch_size: int) -> int:
    """Delete up to `batch_size` finished items of the job in one statement; returns how many."""
    table = JobItem._meta.db_table
    lock = "FOR UPDATE SKIP LOCKED" if is_postgresql() else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE job_id = %s "
            f"AND finished_at IS NOT NULL AND status IN (%s, %s, %s) LIMIT %s {lock})",
            [job_id, *JobItem.FINISHED, batch_size],
        )
        return cursor.rowcount
