"""A drain: the loop a django-q2 task runs. It serves whichever job is due (see scheduler), in
stints: its lanes claim, extract and commit that job's chunks until the job has nothing claimable,
another job becomes due, or the time budget is spent; then it picks again. When the budget is spent
(or its cluster stops: eventproject.work.cluster_stopping) with work left, it enqueues its own
continuation, which inherits its place.

Any number of drains run at once on any number of machines. Every chunk stops extracting
JOBS_COMMIT_RESERVE_SECONDS before django-q2's task timeout and commits what it did. An extractor
with several lanes (the LLM's) works on that many chunks of the job at once, so its calls stay in
flight while one chunk is loaded, packed or committed.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Min, QuerySet

from eventproject.db import DatabaseNow, connection_reset, database_now
from eventproject.outages import is_outage
from eventproject.work import cluster_stop_wait, cluster_stopping
from extraction.extractors import Extractor, ExtractorFatalError, UnknownExtractor, make_extractor

from .. import bells, transitions
from ..models import Drain, Job, JobItem
from .chunk import process_one_chunk
from .claims import job_items_left, jobs_with_claimable
from .keeper import DrainKeeper, drain_beat_seconds
from .scheduler import PICK_EVERY_SECONDS, fairest, job_pick

logger = logging.getLogger(__name__)

OUTAGE_BACKOFF_SECONDS = (0.5, 5.0)  # a lane waits this long after an outage, doubling up to the second


@dataclass
class DrainRun:
    """One drain task's run, shared by its lanes."""

    drain_id: int
    keeper: DrainKeeper
    claim_until: float  # time.monotonic(): no claim after this (the drain's budget)
    deadline: float | None  # time.monotonic(): chunks stop extracting (below the task timeout)
    only: int | None = None  # serve this job alone (a job run in this process)
    on_chunk: Callable[[], None] | None = None
    extractors: dict[int, Extractor] = field(default_factory=dict)

    def time_up(self) -> bool:
        """Its budget is spent or its cluster stops: work left goes on in a continuation."""
        return time.monotonic() >= self.claim_until or cluster_stopping()

    def time_left(self) -> bool:
        return not self.time_up() and not self.keeper.evicted


@dataclass
class Stint:
    """A drain's lanes at work on one job, until `over`."""

    job: Job
    extractor: Extractor
    over: threading.Event = field(default_factory=threading.Event)


def drain(
    *,
    drain_id: int | None = None,
    only: int | None = None,
    budget_seconds: float | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Serve jobs until nothing is claimable, the time budget (JOBS_DRAIN_BUDGET_SECONDS) is spent,
    or the drain lost its place. `drain_id`: the place a continuation inherits. `only`: serve that
    job alone (a job run here, in this process: the predecessor's synchronous endpoint, `extract
    --sync`)."""
    started = time.monotonic()
    budget = settings.JOBS_DRAIN_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    drain_id = drain_enter(drain_id)
    keeper = DrainKeeper(drain_id)
    run = DrainRun(
        drain_id,
        keeper,
        claim_until=started + budget,
        deadline=None
        if math.isinf(budget)
        else started + settings.Q_TIMEOUT - settings.JOBS_COMMIT_RESERVE_SECONDS,
        only=only,
        on_chunk=on_chunk,
    )
    continued = False
    served: set[int] = set()
    try:
        if connection.in_atomic_block:  # a caller's transaction (tests): no other thread could see its rows
            _serve(run, served)
        else:
            with keeper:
                _serve(run, served)
        if run.time_up() and not keeper.evicted and _work_left(only):
            bells.drain_continue(drain_id)  # the budget is spent or the cluster stops, work is left
            continued = True
    finally:
        if not continued:
            Drain.objects.filter(id=drain_id).delete()
    for job_id in served | ({only} if only else set()):  # a cancel waits for the last chunk: this may be it
        transitions.job_finish_if_done(job_id)


def drain_enter(drain_id: int | None = None) -> int:
    """This drain's row: the one a continuation inherits (if it is still there), else a new one.
    Rows of drains that have not beaten for JOBS_DRAIN_STALE_SECONDS (dead or frozen) go."""
    Drain.objects.filter(seen_at__lt=DatabaseNow(-settings.JOBS_DRAIN_STALE_SECONDS)).delete()
    if drain_id and Drain.objects.filter(id=drain_id).update(seen_at=DatabaseNow()):
        return drain_id
    return Drain.objects.create(started_at=DatabaseNow(), seen_at=DatabaseNow()).id


def _serve(run: DrainRun, served: set[int]) -> None:
    """Stints, each on the job that is due, until no job has work for this drain."""
    idle_since = None
    while run.time_left():
        job = job_pick(run.drain_id, only=run.only)
        if job is None:
            idle_since = idle_since or time.monotonic()
            wait = _idle_wait(run.only, idle_for=time.monotonic() - idle_since)
            if wait is None or time.monotonic() + wait >= run.claim_until:
                return
            cluster_stop_wait(wait)
            continue
        idle_since = None
        if (extractor := _extractor(run, job)) is None:
            continue
        transitions.job_mark_running(job.id)
        job.refresh_from_db()
        served.add(job.id)
        _stint(run, Stint(job, extractor))
        transitions.job_finish_if_done(job.id)


def _extractor(run: DrainRun, job: Job) -> Extractor | None:
    """The job's extractor, made once per drain (a worker's first job imports its code); a job whose
    extractor cannot start fails."""
    if job.id not in run.extractors:
        try:
            run.extractors[job.id] = make_extractor(job.extractor, job.options)
        except (UnknownExtractor, ValidationError, ExtractorFatalError) as exc:
            transitions.job_fail(job.id, f"cannot start extractor {job.extractor!r}: {exc}")
            return None
    return run.extractors[job.id]


def _idle_wait(only: int | None, *, idle_for: float) -> float | None:
    """How long a drain with no job to serve waits before looking again; None: it leaves. It waits
    for a pending item's backoff to end, and, for at most JOBS_DRAIN_STALE_SECONDS, for room in a
    job whose places live drains hold (a dead cluster's drains go stale in that time)."""
    if _work_left(only):
        return 1.0 if idle_for < settings.JOBS_DRAIN_STALE_SECONDS else None
    pending = JobItem.objects.filter(job__in=_working_jobs(only), status=JobItem.Status.PENDING)
    next_retry = pending.aggregate(at=Min("retry_at"))["at"]
    if next_retry is None:
        return None
    return min(max((next_retry - database_now()).total_seconds(), 0.05), 1.0)


def _work_left(only: int | None) -> bool:
    """Whether a working job (this one) has claimable items."""
    return jobs_with_claimable(_working_jobs(only)).exists()


def _working_jobs(only: int | None) -> QuerySet[Job]:
    """The queued or running jobs (this one, if it is)."""
    jobs = Job.objects.filter(status__in=Job.WORKING)
    return jobs if only is None else jobs.filter(id=only)


def _stint(run: DrainRun, stint: Stint) -> None:
    lanes = stint.extractor.lanes
    if lanes == 1 or connection.in_atomic_block:
        _lane(run, stint, lane=0)
        return
    with ThreadPoolExecutor(lanes, thread_name_prefix="lane") as pool:
        for future in [
            pool.submit(_lane, run, stint, lane=lane, own_connection=True) for lane in range(lanes)
        ]:
            future.result()


def _lane(run: DrainRun, stint: Stint, *, lane: int, own_connection: bool = False) -> None:
    """Claim, extract and commit the stint's job's chunks one after the other until it has nothing
    claimable, the first lane finds another job due (asked at most every PICK_EVERY_SECONDS, at a
    chunk boundary), the time is up, or the drain lost its place. After an outage (a dropped
    connection, the database away) the lane waits, longer each time up to OUTAGE_BACKOFF_SECONDS[1],
    and tries again on a fresh connection. Interrupted items are looked for at the start, every
    drain beat, after an outage, and whenever nothing pending is left.

    Of several lanes, the first starts with small claims that double up to the chunk size, so
    calls go out while the others load whole chunks. `own_connection`: this lane runs in a thread
    of its own, whose connection it closes at the end.
    """
    job, extractor = stint.job, stint.extractor
    after = 0  # where this lane's last claim ended
    size = max(1, job.chunk_size // 8) if lane == 0 and extractor.lanes > 1 else job.chunk_size
    left = job_items_left(job.id)
    expired_checked, picked_at = -math.inf, time.monotonic()
    outages = 0  # in a row
    try:
        while run.time_left() and not stint.over.is_set():
            pause = 0.0
            try:
                check_expired = time.monotonic() - expired_checked >= drain_beat_seconds() or not after
                if check_expired:
                    expired_checked = time.monotonic()
                done = process_one_chunk(
                    job,
                    extractor,
                    after=after,
                    size=_claim_size(size, left, extractor),
                    expired=check_expired,
                    keeper=run.keeper,
                    deadline=run.deadline,
                )
                if done is None:
                    if after:  # look once more from the start: items skipped while locked, or backing off
                        after = 0
                        continue
                    stint.over.set()  # nothing claimable now: the drain picks again
                    return
                claim, committed = done
                after, size, left = claim.last_id, min(2 * size, job.chunk_size), committed.left
                if run.on_chunk:
                    run.on_chunk()
                if committed.interrupted:
                    outages, expired_checked = outages + 1, -math.inf  # its users come back at once
                    pause = _outage_pause(outages)
                else:
                    outages = 0
                if lane == 0 and run.only is None and time.monotonic() - picked_at >= PICK_EVERY_SECONDS:
                    picked_at = time.monotonic()
                    if fairest(run.drain_id) != job.id:
                        stint.over.set()  # another job is due
                        return
            except Exception as exc:
                if connection.in_atomic_block or not is_outage(exc):
                    raise
                outages += 1
                pause = _outage_pause(outages)
                logger.warning(
                    "drain of job %s: an outage (%s: %s); trying again in %.1f s on a fresh connection",
                    *(job.id, type(exc).__name__, str(exc).strip()[:300], pause),
                )
                connection_reset()
            if pause:
                if time.monotonic() + pause >= run.claim_until:
                    return
                cluster_stop_wait(pause)
    finally:
        if own_connection:
            connection.close()


def _outage_pause(outages: int) -> float:
    """How long a lane waits after `outages` outages in a row."""
    first, most = OUTAGE_BACKOFF_SECONDS
    return min(first * 2 ** min(outages - 1, 10), most)


def _claim_size(size: int, left: int, extractor: Extractor) -> int:
    """Guided self-scheduling: no claim above an even share of the items left among the lanes that
    may be working, so the last chunks are small and the workers finish together (instead of one
    working through a whole chunk alone while the others idle)."""
    return max(1, min(size, math.ceil(left / (settings.JOBS_DRAIN_TASKS * extractor.lanes))))


def job_drain(
    job_id: int,
    *,
    budget_seconds: float | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Work on this one job here, in this process, until nothing is claimable or the budget is
    spent (services.job_run_here; tests)."""
    drain(only=job_id, budget_seconds=budget_seconds, on_chunk=on_chunk)
