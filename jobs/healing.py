"""Healing: bring all background work back to health after any fault. Every cluster runs heal_all()
when it starts and every JOBS_HEAL_SECONDS (our `qcluster` command); `resume_jobs` runs it once.
Idempotent, safe anywhere, any time, on any number of machines at once."""

from django.conf import settings
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from eventproject.db import DatabaseNow
from eventproject.work import tasks_waiting, unanswered
from extraction.imports import imports_heal
from webhooks.delivery import deliveries_heal

from . import bells, transitions
from .models import Job, JobItem
from .schedules import schedules_run_due
from .worker.claims import jobs_with_claimable
from .worker.scheduler import jobs_asleep_level, workers_serving


def heal_all(*, force: bool = False, drains_at_most: int | None = None) -> list[str]:
    """Heal jobs and imports, start the jobs of due schedules (each due time starts one job, whichever
    cluster claims it) and ring webhook deliveries that are due; a line for each thing done.
    `force`: ring every job short of drains whenever it was last rung (`resume_jobs`, an operator's
    "now"; a cluster that starts, as many drains in all as it has workers: `drains_at_most`)."""
    return [
        *jobs_heal(force=force, drains_at_most=drains_at_most),
        *imports_heal(),
        *schedules_run_due(),
        *deliveries_heal(),
    ]


def jobs_heal(*, force: bool = False, drains_at_most: int | None = None) -> list[str]:
    """- a running job with nothing claimable banks no credit of workers' time (see scheduler);
    - a stopped job keeps no pending or running items (left by a dead worker, or by older versions);
    - a job with nothing left is finished;
    - a queued or running job with claimable items and fewer than JOBS_DRAIN_TASKS live drains gets
      the missing ones rung (a lost queue message, a killed cluster's drains, a broker that was down).
    """
    jobs_asleep_level()  # routine: no line
    return [*_stopped_jobs_sweep(), *_jobs_finish(), *_jobs_ring(force=force, at_most=drains_at_most)]


def _stopped_jobs_sweep() -> list[str]:
    stale = Q(status=JobItem.Status.PENDING) | Q(
        status=JobItem.Status.RUNNING, lease_expires_at__lt=DatabaseNow()
    )
    held = Exists(JobItem.objects.filter(stale, job_id=OuterRef("pk")))
    done = []
    for job_id in Job.objects.exclude(status__in=Job.WORKING).filter(held).values_list("id", flat=True):
        if cancelled := transitions.items_stopped_sweep(job_id):
            done.append(f"job {job_id}: cancelled {cancelled} items a stopped job still held")
    return done


def _jobs_finish() -> list[str]:
    nothing_running = ~Exists(JobItem.objects.filter(job_id=OuterRef("pk"), status=JobItem.Status.RUNNING))
    nothing_left = ~Exists(JobItem.objects.filter(job_id=OuterRef("pk"), status__in=JobItem.ACTIVE))
    ending = Job.objects.filter(
        Q(status__in=Job.WORKING) & nothing_left | Q(status=Job.Status.CANCELLING) & nothing_running
    )
    done = []
    for job_id in ending.values_list("id", flat=True):
        transitions.job_mark_running(job_id)
        if status := transitions.job_finish_if_done(job_id):
            done.append(f"job {job_id}: nothing left, now {status}")
    return done


def _jobs_ring(*, force: bool, at_most: int | None) -> list[str]:
    """Ring the drains a job lacks (`at_most` drains in all: a drain serves whichever job is due),
    once its bell has gone unanswered for JOBS_DRAIN_STALE_SECONDS (`force`: whenever it was rung)
    and while no task waits in the queue.

    A task waiting means no worker anywhere is free: more drains would only lengthen the queue (a
    job short of drains because fairer jobs hold the workers is served as they come free). Drains
    rung while every worker is busy can also wait unseen in a busy cluster's prefetch (django-q2's
    pusher holds up to `queue_limit` + 1 tasks ahead of its workers); ringing again each quiet period
    until a task waits in the queue reaches the free workers of other clusters within a few heals,
    and leaves at most that prefetch and one ring of surplus."""
    if tasks_waiting():
        return []
    serving = workers_serving(OuterRef("pk")).order_by().values("job_id").annotate(n=Count("id")).values("n")
    candidates = jobs_with_claimable(Job.objects.filter(status__in=Job.WORKING)).annotate(
        live=Coalesce(Subquery(serving, output_field=IntegerField()), 0)
    )
    done = []
    for job in candidates.order_by("virtual_time", "id").only("id", "max_workers"):
        missing = job.drains_wanted - job.live
        missing = min(missing, at_most) if at_most is not None else missing
        if missing <= 0:
            continue
        ring = Job.objects.filter(id=job.id)
        if not force:  # unless another cluster's heal just rang it
            ring = ring.filter(unanswered(settings.JOBS_DRAIN_STALE_SECONDS, field="bell_rung_at"))
        if not ring.update(bell_rung_at=DatabaseNow()):
            continue
        bells.job_ring(job.id, tasks=missing, mark=False)
        done.append(f"job {job.id}: {job.live} live drains, rang {missing} more")
        at_most = at_most - missing if at_most is not None else None
    return done
