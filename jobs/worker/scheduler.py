"""Which job a worker serves next: a fair share of the workers, weighted by priority, decided at
chunk boundaries.

Each job's `virtual_time` grows by the seconds its chunks take divided by its priority (the
commit adds them). A worker serves, among the queued or running jobs with claimable items and room
for another worker, the one whose virtual time will be least once the stints on it are charged:
the other workers' stints in progress on it and this worker's own, each at least PICK_EVERY_SECONDS
(a worker asks again no sooner; a chunk is charged only when it commits). Jobs of equal priority
get equal shares of the workers' time, a job of priority 4 twice the share of one of 2, whatever
their sizes and start order. Ordered by the virtual time alone, the job of lower priority stayed
a stint ahead, and both workers of a cluster switched jobs together, each job served by all
or none of them for a second at a time.

A job that starts running begins level with the running ones (transitions.job_mark_running), so a
job started beside a huge one is served at the next chunk boundary of any worker, without a burst
of catching up. Ties go to the job with fewer workers, then the older one.

Nothing starves: a job not served keeps its virtual time while the served ones grow theirs, so it
becomes the least within the time of a few chunks. A running job with nothing claimable (its users
wait out retry backoffs) banks no credit meanwhile: healing keeps it level with the jobs that have
work (jobs_asleep_level), or, back, it would take every worker for as long as it had been away.

A job holds at most min(JOBS_DRAIN_TASKS, its max_workers) workers: a worker switching to it takes
its row lock and counts again, so two workers switching at once cannot both pass the cap.
"""

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, IntegerField, Min, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Least

from eventproject.db import DatabaseNow

from ..models import Drain, Job
from .claims import jobs_with_claimable

PICK_EVERY_SECONDS = 0.5  # a lane serving a job asks at most this often whether another one is due


def workers_serving(job_ids=None, *, besides: int | None = None) -> QuerySet[Drain]:
    """The live drains (beaten within JOBS_DRAIN_STALE_SECONDS) serving a job, `besides` this one."""
    drains = Drain.objects.filter(seen_at__gte=DatabaseNow(-settings.JOBS_DRAIN_STALE_SECONDS))
    if job_ids is not None:
        drains = drains.filter(job_id=job_ids)
    return drains.exclude(id=besides) if besides else drains


def _candidates(drain_id: int | None, only: int | None) -> QuerySet[Job]:
    """Working jobs with claimable items and room for this drain, the fairest first."""
    serving = workers_serving(OuterRef("pk"), besides=drain_id)
    count = Subquery(serving.order_by().values("job_id").annotate(n=Count("id")).values("n"))
    cap = settings.JOBS_DRAIN_TASKS
    jobs = (
        jobs_with_claimable(Job.objects.filter(status__in=Job.WORKING))
        .annotate(serving=Coalesce(count, 0, output_field=IntegerField()))
        .filter(serving__lt=Least(Coalesce("max_workers", Value(cap)), Value(cap)))
    )
    if only is not None:
        jobs = jobs.filter(id=only)
    stints = F("serving") + 1  # the stints in progress on the job, and this drain's
    after_the_stints = F("virtual_time") + stints * Value(PICK_EVERY_SECONDS) / F("priority")
    return jobs.order_by(after_the_stints, "serving", "id")


def fairest(drain_id: int | None, *, only: int | None = None) -> int | None:
    """The id of the job this drain should serve now (see the module's docstring), or None."""
    return _candidates(drain_id, only).values_list("id", flat=True).first()


def jobs_asleep_level() -> int:
    """Raise the virtual time of running jobs with nothing claimable and no live drain to the least
    of the working jobs with claimable items (those waiting for a worker among them: their credit
    is owed); how many were raised."""
    claimable = jobs_with_claimable(Job.objects.filter(status__in=Job.WORKING))
    level = claimable.order_by().aggregate(low=Min("virtual_time"))["low"]
    if level is None:
        return 0
    served = workers_serving().filter(job__isnull=False).values("job_id")  # (NOT IN meets no NULL)
    asleep = Job.objects.filter(status=Job.Status.RUNNING, virtual_time__lt=level).exclude(id__in=served)
    return asleep.exclude(id__in=claimable.values("id")).update(virtual_time=level)


def job_pick(drain_id: int, *, only: int | None = None) -> Job | None:
    """Move this drain to the job it should serve now and return that job; None, the drain serving
    no job, when no job has claimable items and room for it. (A drain left counted on its last job
    would hold a place there: after a cap lowered below the workers on a job, each of them found
    no room because of the others, and none came back.)"""
    for _ in range(3):  # another worker may take the last room first: look again
        chosen = fairest(drain_id, only=only)
        if chosen is None:
            break
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(id=chosen, status__in=Job.WORKING).first()
            if job and workers_serving(job.id, besides=drain_id).count() < job.drains_wanted:
                Drain.objects.filter(id=drain_id).update(job=job)
                return job
    Drain.objects.filter(id=drain_id, job__isnull=False).update(job=None)
    return None
