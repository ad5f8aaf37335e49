"""The task queue is only a doorbell (eventproject.work): a drain task carries no facts, only "there
is work" (and, for a drain's continuation, the place it inherits). Every fact lives in the tables,
so a lost or doubled task loses or doubles nothing, and healing rings again whatever went unanswered.
"""

import contextlib

from django.db import DatabaseError

from eventproject.db import DatabaseNow
from eventproject.work import ring

from .models import Job

DRAIN_TASK = "jobs.tasks.drain"


def job_ring(job_id: int, *, tasks: int, mark: bool = True) -> None:
    """Enqueue `tasks` drain tasks for this job's sake once the current transaction commits (a drain
    serves whichever job is due, see jobs.worker.scheduler). `mark`: note the ring, so that healing
    does not ring again while these drains wait in the queue.

    When the broker cannot take them (down, unreachable), the next heal rings again; the caller's
    work stands.
    """
    if mark:
        Job.objects.filter(id=job_id).update(bell_rung_at=DatabaseNow())

    def unanswered() -> None:
        with contextlib.suppress(DatabaseError):
            Job.objects.filter(id=job_id).update(bell_rung_at=None)

    ring(
        DRAIN_TASK,
        *[None] * tasks,
        group=f"job-{job_id}",
        name=f"drain tasks for job {job_id}",
        failed=unanswered,
    )


def drain_continue(drain_id: int) -> None:
    """Enqueue a drain's continuation, which takes over its place (its budget is spent, work is left)."""
    ring(DRAIN_TASK, drain_id, group="drains", name=f"the continuation of drain {drain_id}")
