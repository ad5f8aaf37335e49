"""The worker side of the job engine: claim a chunk with a lease, extract, commit fenced by the token.

job_drain()          the loop a django-q2 task runs: take a drain place, process chunks until nothing
                     is claimable, the job stops running, or the time budget is spent
process_one_chunk()  one unit of work; returns the claim it worked on, None if there was none
chunk_claim()        one short transaction stamps a token, a lease (database clock), attempts + 1
chunk_commit()       events and item statuses commit only for items that still carry this worker's
                     token; a lost lease throws the work away
DrainKeeper          one thread per drain: beats its place and extends its chunks' leases
jobs_heal()          run by every cluster at start and every few seconds: rings jobs that lack
                     drains, sweeps items left behind by stopped jobs, finishes jobs with nothing left

docs/architecture.md describes the protocol and the faults each part heals.
"""

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, Count, Exists, F, IntegerField, Min, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from eventproject.db import (
    DatabaseNow,
    connection_reset,
    database_now,
    datetime_adapter,
    is_postgresql,
    now_sql,
    rows_sql,
)
from eventproject.leases import LeaseKeeper
from eventproject.outages import is_outage
from extraction.extractors import (
    Control,
    ExtractionError,
    Extractor,
    ExtractorFatalError,
    UnknownExtractor,
    make_extractor,
)
from extraction.services import Outcome, chunk_extract, extraction_failures_record, extraction_results_write
from ops import metrics

from .models import Drain, Job, JobItem
from .webhook_events import JOB_CANCELLED, JOB_COMPLETED, JOB_FAILED, job_event_record

logger = logging.getLogger(__name__)

COMMIT_TRIES = 5  # a commit is retried on a fresh connection: the fence makes it idempotent
OUTAGE_BACKOFF_SECONDS = (0.5, 5.0)  # a lane waits this long after an outage, doubling up to the second


class ClaimedItem(NamedTuple):
    id: int
    user_id: str
    attempts: int  # including this one
    interruptions: int  # times a claim of it was cut short before (see JobItem.interruptions)


@dataclass(frozen=True)
class Claim:
    job_id: int
    token: uuid.UUID
    items: list[ClaimedItem]  # by id

    @property
    def user_ids(self) -> list[str]:
        return [item.user_id for item in self.items]

    @property
    def last_id(self) -> int:
        return self.items[-1].id


def interruption_limit(job: Job) -> int:
    """Interruptions after which a user fails: enough for claims halving from the chunk size down
    to this user alone (see interrupted_claim_size), then max_attempts more with it alone."""
    return job.max_attempts + job.chunk_size.bit_length() - 1


def interrupted_claim_size(job: Job, interruptions: int) -> int:
    """Items interrupted `interruptions` times are claimed again at most this many at a time:
    half the chunk after each interruption, so that a user who stops every worker taking it is
    soon alone in its claim, and the others are no longer cut short with it."""
    return max(1, job.chunk_size >> min(interruptions, 30))


def interrupted_failure(interruptions: int, job: Job) -> str:
    return (
        f"processing this user was cut short {interruptions} times, the last {job.max_attempts} with this "
        f"user alone (its worker died, froze past its lease or lost the database each time)"
    )


# Job transitions a worker makes ---------------------------------------------------------------------
def job_mark_running(job_id: int) -> bool:
    return bool(
        Job.objects.filter(id=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, started_at=Coalesce(F("started_at"), timezone.now())
        )
    )


def job_finish_if_done(job_id: int) -> str | None:
    """Running with no active items → completed; cancelling with none running → cancelled, its
    pending items swept in the same transaction (a stopped job never keeps any)."""
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
            job_pending_cancel(job_id)
            job_event_record(job_id, JOB_CANCELLED)
            return Job.Status.CANCELLED
    return None


def job_pending_cancel(job_id: int) -> int:
    """Cancel the job's pending items and count them; returns how many."""
    cancelled = JobItem.objects.filter(job_id=job_id, status=JobItem.Status.PENDING).update(
        status=JobItem.Status.CANCELLED, finished_at=timezone.now(), retry_at=None
    )
    if cancelled:
        Job.objects.filter(id=job_id).update(cancelled_items=F("cancelled_items") + cancelled)
    return cancelled


def job_fail(job_id: int, message: str, *, release_token=None) -> bool:
    """A job-level error (bad configuration, fail-fast, the token cap): the job fails and its pending
    items are cancelled. `release_token` cancels the caller's own claimed items too; chunks still
    running elsewhere cancel theirs when they commit. Returns whether it applied.
    """
    now = timezone.now()
    with transaction.atomic():
        applied = Job.objects.filter(id=job_id, status__in=Job.WORKING).update(
            status=Job.Status.FAILED, error=message[:10_000], finished_at=now
        )
        if applied:
            job_pending_cancel(job_id)
        if release_token is not None:
            released = JobItem.objects.filter(
                claim_token=release_token, status=JobItem.Status.RUNNING
            ).update(status=JobItem.Status.CANCELLED, finished_at=now, lease_expires_at=None)
            Job.objects.filter(id=job_id).update(cancelled_items=F("cancelled_items") + released)
        if applied:
            job_event_record(job_id, JOB_FAILED)
    return bool(applied)


def job_ring(job_id: int, *, tasks: int, drain_id: int | None = None, mark: bool = True) -> None:
    """Enqueue `tasks` drain tasks for this job once the current transaction commits (`drain_id`: a
    drain's continuation, which takes over its place). `mark`: note the ring, so that healing does
    not ring again while these drains wait in the queue.

    The queue is only a doorbell: when the broker cannot take them (down, unreachable), the next
    heal rings the job again; the caller's work stands.
    """
    from django_q.tasks import async_task

    if mark:
        Job.objects.filter(id=job_id).update(bell_rung_at=DatabaseNow(), short_rings=0)

    def enqueue() -> None:
        try:
            for _ in range(tasks):
                async_task(
                    "jobs.tasks.drain_job",
                    job_id,
                    drain_id,
                    group=f"job-{job_id}",
                    task_name=f"drain job {job_id}",
                )
        except Exception:
            logger.warning("could not enqueue drain tasks for job %s; a cluster will ring it again", job_id)
            with contextlib.suppress(DatabaseError):
                Job.objects.filter(id=job_id).update(bell_rung_at=None)

    transaction.on_commit(enqueue)


def _claimable() -> Q:
    """Pending items past their backoff, and running items whose lease ran out (database clock)."""
    now = DatabaseNow()
    return Q(status=JobItem.Status.PENDING) & (Q(retry_at__isnull=True) | Q(retry_at__lte=now)) | Q(
        status=JobItem.Status.RUNNING, lease_expires_at__lt=now
    )


def job_has_claimable_items(job_id: int) -> bool:
    return JobItem.objects.filter(job_id=job_id).filter(_claimable()).exists()


# Claims ------------------------------------------------------------------------------------------------
def _stamp_sql(chosen: str, *, reclaim: bool = False) -> str:
    """Stamp a new claim on the items `chosen` (a subquery of ids) and return them. A pending item
    starts an attempt; an item reclaimed after an interruption resumes the attempt it was on."""
    count = "interruptions = interruptions + 1" if reclaim else "attempts = attempts + 1"
    return (
        f"UPDATE {JobItem._meta.db_table} SET status = 'running', claim_token = %(token)s, "
        f"lease_expires_at = {now_sql('%(lease)s')}, {count}, started_at = {now_sql()}, "
        f"retry_at = NULL WHERE id IN ({chosen}) RETURNING id, user_id, attempts, interruptions"
    )


def _pending_sql() -> str:
    """Up to %(limit)s claimable pending items of the job above id %(after)s, if the job is running
    (the cancel check). The lower bound keeps the cost of a claim flat as a job advances, whichever
    index the planner picks: without it, PostgreSQL sometimes walks the primary key from the start
    through every item already done (measured: 77 ms per claim after 200,000 of 1,000,000 items).

    PostgreSQL: FOR UPDATE SKIP LOCKED lets workers claim different rows at once.
    SQLite: one statement is one transaction, and SQLite runs one writer at a time.
    """
    lock = "FOR UPDATE SKIP LOCKED" if is_postgresql() else ""
    return (
        f"SELECT id FROM {JobItem._meta.db_table} "
        f"WHERE job_id = %(job)s AND status = 'pending' AND id > %(after)s "
        f"AND (retry_at IS NULL OR retry_at <= {now_sql()}) "
        f"AND EXISTS (SELECT 1 FROM {Job._meta.db_table} WHERE id = %(job)s AND status = 'running') "
        f"ORDER BY id LIMIT %(limit)s {lock}"
    )


def chunk_claim(job: Job, *, after: int = 0, size: int | None = None, expired: bool = True) -> Claim | None:
    """Claim up to `size` (the job's chunk size) claimable items of a running job: with `expired`,
    interrupted items first (see _expired_reclaim), a claim of their own; else pending ones with an
    id above `after` (where this worker's previous claim ended), in one statement."""
    size = size or job.chunk_size
    token = uuid.uuid4()
    rows = _expired_reclaim(job, token, size) if expired else []
    if not rows:
        params = {**_claim_params(job, token), "limit": size, "after": after}
        with connection.cursor() as cursor:
            cursor.execute(_stamp_sql(_pending_sql()), params)
            rows = cursor.fetchall()
    return Claim(job.id, token, sorted(ClaimedItem(*row) for row in rows)) if rows else None


def _claim_params(job: Job, token: uuid.UUID) -> dict[str, Any]:
    return {
        "token": token if is_postgresql() else token.hex,  # as Django's UUIDField stores it
        "lease": float(settings.JOBS_LEASE_SECONDS),
        "job": job.id,
    }


def _expired_reclaim(job: Job, token: uuid.UUID, size: int) -> list[tuple[int, str, int, int]]:
    """Claim items of a running job that were interrupted: their lease ran out (their worker died
    or froze) or their chunk was cut short by an outage. The attempt they were on goes on (it was
    not the user's doing); the claim is smaller the more often they were interrupted (see
    interrupted_claim_size), and those interrupted too often fail instead. Workers look for these
    every few seconds, not at every claim: a dead worker's chunk waits out its lease anyway."""
    with transaction.atomic():
        expired = list(
            JobItem.objects.select_for_update(skip_locked=True, of=("self",))  # not the job's row
            .filter(
                job_id=job.id,
                job__status=Job.Status.RUNNING,
                status=JobItem.Status.RUNNING,
                lease_expires_at__lt=DatabaseNow(),
            )
            .order_by("id")
            .values_list("id", "interruptions")[:size]
        )
        if not expired:
            return []
        limit = interruption_limit(job)
        if exhausted := [item_id for item_id, count in expired if count + 1 >= limit]:
            _fail_interrupted(job, exhausted, limit)
        rows = []
        if again := [(item_id, count) for item_id, count in expired if count + 1 < limit]:
            reclaim = again[: interrupted_claim_size(job, max(count + 1 for _, count in again))]
            with connection.cursor() as cursor:
                cursor.execute(
                    _stamp_sql(", ".join(str(item_id) for item_id, _ in reclaim), reclaim=True),
                    _claim_params(job, token),
                )
                rows = cursor.fetchall()
        metrics.count(metrics.LEASE_EXPIRED, len(expired))  # last: a counter row is the last lock taken
    return rows


def _fail_interrupted(job: Job, item_ids: list[int], interruptions: int) -> None:
    """Items interrupted too often fail: alone in their claims, they stopped every worker taking them."""
    message = interrupted_failure(interruptions, job)
    items = JobItem.objects.filter(id__in=item_ids, status=JobItem.Status.RUNNING)
    user_ids = list(items.values_list("user_id", flat=True))
    failed = items.update(
        status=JobItem.Status.FAILED,
        finished_at=timezone.now(),
        lease_expires_at=None,
        interruptions=F("interruptions") + 1,
        error=message,
    )
    Job.objects.filter(id=job.id).update(failed_items=F("failed_items") + failed)
    extraction_failures_record(errors=dict.fromkeys(user_ids, message))


# What a chunk's extraction sees ------------------------------------------------------------------------
class JobControl(Control):
    """The job as a long extraction sees it: stop when the job no longer runs (asked at most once a
    second), when the chunk's lease was lost, or when its deadline (below the task timeout) is near.
    Committed tokens are read afresh each time (only asked when a token cap is set, once per call),
    so the cap overshoots by no more than the calls in flight and the chunks not yet committed.

    Called from the extractor's threads too, each with its own connection.
    """

    def __init__(self, job_id: int, *, deadline: float | None = None):
        super().__init__()
        self.job_id = job_id
        self.deadline = deadline  # time.monotonic() by which the chunk must stop extracting
        self.checked_at = -1.0
        self.status = Job.Status.RUNNING
        self.lease_lost = False
        self.finished = False  # extraction is over: the commit (fenced) is all that is left

    def lose_lease(self) -> None:
        """Another worker took over (some of) this chunk's items: its work would be thrown away."""
        self.lease_lost = True

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def stopped(self) -> bool:
        if self.lease_lost or self.seconds_left() == 0:
            return True
        with self.lock:
            if time.monotonic() - self.checked_at >= 1:
                status = Job.objects.filter(id=self.job_id).values_list("status", flat=True).first()
                self.status = status or Job.Status.CANCELLED
                self.checked_at = time.monotonic()
            return self.status != Job.Status.RUNNING

    def tokens_used(self) -> int:
        tokens = Job.objects.filter(id=self.job_id).values_list("prompt_tokens", "completion_tokens").first()
        return sum(tokens or ())

    def fail_job(self, message: str) -> None:
        job_fail(self.job_id, message)
        with self.lock:
            self.status = Job.Status.FAILED


def drain_beat_seconds() -> float:
    """How often a drain beats and extends its leases: three times within a lease and within the
    time after which a silent drain counts as dead."""
    return min(settings.JOBS_LEASE_SECONDS, settings.JOBS_DRAIN_STALE_SECONDS) / 3


class DrainKeeper:
    """Keeps a drain alive from a background thread (a LeaseKeeper): every drain_beat_seconds() it
    beats the drain's place and extends the leases of the chunks it holds, on the database's clock.

    A chunk whose items no longer all carry its token has lost its lease: its control says stop, so
    no more is spent on work that will be thrown away. A drain whose place was given away (it was
    frozen past its lease) is `evicted` and takes no more chunks.
    """

    def __init__(self, drain_id: int | None):
        self.drain_id = drain_id
        self.held: dict[uuid.UUID, tuple[int, JobControl]] = {}
        self.lock = threading.Lock()
        self.evicted = False
        self.keeper = LeaseKeeper(f"drain {drain_id}", self._renew, drain_beat_seconds())

    def __enter__(self) -> "DrainKeeper":
        self.keeper.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.keeper.__exit__(*exc)

    def hold(self, claim: Claim, control: JobControl) -> None:
        with self.lock:
            self.held[claim.token] = (len(claim.items), control)

    def release(self, claim: Claim) -> None:
        with self.lock:
            self.held.pop(claim.token, None)

    def beat(self) -> None:
        if self.drain_id is not None and not Drain.objects.filter(id=self.drain_id).update(
            seen_at=DatabaseNow()
        ):
            self.evicted = True
        with self.lock:  # a chunk being committed holds its items' locks: renewing them would wait
            held = [(token, held) for token, held in self.held.items() if not held[1].finished]
        for token, (count, control) in held:
            renewed = JobItem.objects.filter(claim_token=token, status=JobItem.Status.RUNNING).update(
                lease_expires_at=DatabaseNow(settings.JOBS_LEASE_SECONDS)
            )
            if renewed < count:
                logger.warning(
                    "claim %s lost its lease: %d of its %d items were taken", token, count - renewed, count
                )
                control.lose_lease()

    def _renew(self) -> bool:
        self.beat()
        return True  # an evicted drain still renews the chunks it holds, until they are committed


# Commits -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Committed:
    """What a chunk's commit did: how many items it still owned, how many of the job's items are
    left to do (for the size of the next claim), and whether an outage cut the chunk short."""

    owned: int
    left: int
    interrupted: bool = False


# The columns of the rows a commit moves the claim's items with (see _item_outcome_sql).
ITEM_OUTCOME_COLUMNS = {
    "id": "bigint",
    "status": "text",
    "error": "text",
    "events": "integer",
    "backoff": "double precision",
    "undo": "integer",
    "prompt": "bigint",
    "completion": "bigint",
}


def _item_outcome_sql(rows: str) -> str:
    """Move every item of the claim to its outcome (`rows`, see rows_sql) in one statement, fenced by
    the claim's token; the items it returns are those the claim still owned."""
    table = JobItem._meta.db_table
    # An interrupted item stays running, its lease ended and its token gone: any worker reclaims
    # it at once (see _expired_reclaim), and a retried commit cannot move it twice.
    return (
        f"UPDATE {table} SET status = v.status, error = v.error, "
        f"lease_expires_at = CASE WHEN v.status = 'running' THEN {now_sql()} END, "
        f"claim_token = CASE WHEN v.status = 'running' THEN NULL ELSE {table}.claim_token END, "
        f"event_count = v.events, attempts = {table}.attempts - v.undo, "
        f"finished_at = CASE WHEN v.status IN ('succeeded', 'failed') THEN %s END, "
        f"retry_at = CASE WHEN v.backoff IS NULL THEN NULL ELSE {now_sql('v.backoff')} END, "
        f"prompt_tokens = {table}.prompt_tokens + v.prompt, "
        f"completion_tokens = {table}.completion_tokens + v.completion "
        f"FROM {rows} WHERE {table}.id = v.id AND {table}.claim_token = %s AND {table}.status = 'running' "
        f"RETURNING {table}.id"
    )


def retry_backoff_seconds(attempts: int) -> float:
    """JOBS_RETRY_BACKOFF_SECONDS after the first attempt, doubling after each one, never above
    JOBS_RETRY_BACKOFF_MAX_SECONDS (minutes, not months; and no overflow at any attempt count)."""
    base, cap = settings.JOBS_RETRY_BACKOFF_SECONDS, settings.JOBS_RETRY_BACKOFF_MAX_SECONDS
    return min(base * 2 ** min(max(attempts - 1, 0), 32), cap)


def chunk_commit(
    claim: Claim,
    job: Job,
    outcomes: Sequence[Outcome],
    extractor: Extractor,
    *,
    usage: dict[str, list[int]] | None = None,
) -> Committed:
    """Commit a chunk's outcomes (one per claimed item, in the claim's order) for the items this
    claim still owns.

    In one transaction, a handful of statements whatever the chunk's size: the items move to their
    outcome (fenced by the token) with the tokens paid for them (`usage`, from Control.usage); new
    events replace old ones for succeeded users; the job's counters move by the same amounts. The
    tokens of items another claim took (a lost lease) are kept too: paid is paid.
    """
    usage = usage or {}
    with transaction.atomic():
        moves, failing = _item_moves(claim, job, outcomes, usage)
        rows, params = rows_sql(moves, ITEM_OUTCOME_COLUMNS)
        token = claim.token if is_postgresql() else claim.token.hex
        with connection.cursor() as cursor:
            cursor.execute(_item_outcome_sql(rows), [datetime_adapter()(timezone.now()), *params, token])
            owned = {item_id for (item_id,) in cursor.fetchall()}
        taken = _taken(claim, owned)
        if owned:
            mine = [outcome for item, outcome in zip(claim.items, outcomes, strict=True) if item.id in owned]
            extraction_results_write(outcomes=mine, extractor=extractor)
            if failed := {o.user_id: o.result.message for o in mine if o.user_id in failing}:
                extraction_failures_record(errors=failed)
            status, left = _job_counters_move(job, mine, failing, usage)
            if status not in Job.WORKING:  # cancelled or failed meanwhile (a resume makes it queued)
                _released_sweep(job, owned)
            retried = sum(1 for move in moves if move["backoff"] is not None and move["id"] in owned)
            metrics.count(metrics.ITEM_RETRIES, retried)  # last: a counter row is the last lock taken
        else:
            left = None
    if usage and taken:
        _uncommitted_usage_keep(job, claim, usage, lost=taken)
    if left is None:
        left = job_items_left(job.id)
    interrupted = any(not o.succeeded and o.result.interrupted for o in outcomes)
    return Committed(len(owned), left, interrupted)


def _item_moves(claim: Claim, job: Job, outcomes: Sequence[Outcome], usage) -> tuple[list[dict], set[str]]:
    """Each claimed item's move, and the users who fail for good (others retry, or were not tried)."""
    moves, failing = [], set()
    for item, outcome in zip(claim.items, outcomes, strict=True):
        prompt, completion = usage.get(item.user_id, (0, 0))
        move = {"id": item.id, "prompt": prompt, "completion": completion, "undo": 0, "backoff": None}
        error = outcome.result
        if outcome.succeeded:
            move.update(status=JobItem.Status.SUCCEEDED, error="", events=len(outcome.result))
        elif error.interrupted:  # reclaimed at once, its attempt going on (see _expired_reclaim)
            move.update(status=JobItem.Status.RUNNING, error=error.message, events=None)
        elif error.stopped:  # never tried (a stop, a lost lease, the deadline): not an attempt
            move.update(status=JobItem.Status.PENDING, error="", events=None, undo=1)
        elif error.permanent or item.attempts >= job.max_attempts:
            move.update(status=JobItem.Status.FAILED, error=error.message, events=None)
            failing.add(item.user_id)
        else:
            move.update(
                status=JobItem.Status.PENDING,
                error=error.message,
                events=None,
                backoff=retry_backoff_seconds(item.attempts),
            )
        moves.append(move)
    return moves, failing


def _taken(claim: Claim, owned: set[int]) -> set[int]:
    """The claim's items another claim took (its lease ran out). Items still carrying this claim's
    token but no longer running were committed by an earlier try of this very commit
    (_commit_with_retries): they are not lost."""
    if len(owned) == len(claim.items):
        return set()
    ids = [item.id for item in claim.items if item.id not in owned]
    taken = set(
        JobItem.objects.filter(id__in=ids).exclude(claim_token=claim.token).values_list("id", flat=True)
    )
    metrics.count(metrics.LEASE_LOST, len(taken))
    return taken


def _released_sweep(job: Job, owned: set[int]) -> None:
    """The job was cancelled or failed while this chunk ran: the users this commit put back to
    work (pending, or interrupted) are cancelled instead, for a stopped job keeps none. Never for
    a job resumed meanwhile (queued or running again): its users are its own again."""
    back = Q(status=JobItem.Status.PENDING) | Q(status=JobItem.Status.RUNNING, claim_token__isnull=True)
    swept = JobItem.objects.filter(back, id__in=owned).update(
        status=JobItem.Status.CANCELLED, finished_at=timezone.now(), retry_at=None, lease_expires_at=None
    )
    if swept:
        Job.objects.filter(id=job.id).update(cancelled_items=F("cancelled_items") + swept)


def job_items_left(job_id: int) -> int:
    """Items of the job not finished yet, by its counters."""
    finished = F("succeeded_items") + F("failed_items") + F("cancelled_items")
    return Job.objects.filter(id=job_id).values_list(F("total_items") - finished, flat=True).first() or 0


def _uncommitted_usage_keep(
    job: Job, claim: Claim, usage: dict[str, list[int]], *, lost: Collection[int] | None = None
) -> None:
    """Tokens are paid even when the work is thrown away (a lost lease, a failed job): add those of
    the `lost` items (default: all the claim's) to the items and the job, so the job's cost stays
    true. Its own short transaction, items before the job row, like every commit."""
    lost = {item.id for item in claim.items} if lost is None else lost
    spent = {
        item.id: usage[item.user_id] for item in claim.items if item.id in lost and item.user_id in usage
    }
    if not spent:
        return
    with transaction.atomic():
        JobItem.objects.filter(id__in=list(spent)).update(
            prompt_tokens=F("prompt_tokens") + _per_item({i: p for i, (p, _) in spent.items()}),
            completion_tokens=F("completion_tokens") + _per_item({i: c for i, (_, c) in spent.items()}),
        )
        Job.objects.filter(id=job.id).update(
            prompt_tokens=F("prompt_tokens") + sum(p for p, _ in spent.values()),
            completion_tokens=F("completion_tokens") + sum(c for _, c in spent.values()),
        )


def _per_item(values: dict[int, Any]) -> Case:
    """A CASE giving each item id its value, with one WHEN per distinct value."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for item_id, value in values.items():
        groups[value].append(item_id)
    return Case(*(When(id__in=ids, then=Value(value)) for value, ids in groups.items()))


def _job_counters_move(job: Job, mine: list[Outcome], failing: set[str], usage) -> tuple[str, int]:
    """Move the job's counters and its fail-fast streak by what this commit did; fail the job when
    the streak is too long. Returns the job's status as it stands under the row lock this update
    takes (a cancel or a failure that committed meanwhile is seen here, never missed) and how many
    items it has left."""
    succeeded = [o for o in mine if o.succeeded]
    errors = [o.result for o in mine if not o.succeeded and o.result.counts]  # not outages, not stops
    moves = {
        "succeeded_items": len(succeeded),
        "failed_items": sum(1 for o in mine if o.user_id in failing),
        "event_count": sum(len(o.result) for o in succeeded),
        "prompt_tokens": sum(usage.get(o.user_id, (0, 0))[0] for o in mine),
        "completion_tokens": sum(usage.get(o.user_id, (0, 0))[1] for o in mine),
    }
    sets = [f"{name} = {name} + %s" for name in moves]
    params: list[Any] = list(moves.values())
    streak = None
    if errors:
        current = Job.objects.select_for_update().only("error_streak", "error_streak_kind").get(id=job.id)
        streak, kind = (0, "") if succeeded else (current.error_streak, current.error_streak_kind)
        for error in errors:
            streak, kind = (streak + 1, kind) if error.kind == kind else (1, error.kind)
        sets += ["error_streak = %s", "error_streak_kind = %s", "error_streak_message = %s"]
        params += [streak, kind[:200], errors[-1].message]
    elif succeeded:
        sets += ["error_streak = 0", "error_streak_kind = ''", "error_streak_message = ''"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Job._meta.db_table} SET {', '.join(sets)} WHERE id = %s "
            f"RETURNING status, total_items - succeeded_items - failed_items - cancelled_items",
            [*params, job.id],
        )
        status, left = cursor.fetchone()
    if streak is not None and streak >= settings.JOBS_FAIL_FAST_AFTER:
        message = (
            f"{streak} items in a row failed with the same kind of error ({kind}); "
            f"the last one: {errors[-1].message}"
        )
        if job_fail(job.id, message):
            return Job.Status.FAILED, left
    return status, left


def _commit_with_retries(
    claim: Claim, job: Job, outcomes: Sequence[Outcome], extractor: Extractor, control: Control
) -> Committed:
    """chunk_commit, tried again on a fresh connection when the database drops it: the fence makes a
    second try commit nothing twice (a first try that did commit left no item running with this
    token)."""
    for attempt in range(1, COMMIT_TRIES + 1):
        try:
            return chunk_commit(claim, job, outcomes, extractor, usage=control.usage)
        except Exception as exc:
            if attempt == COMMIT_TRIES or connection.in_atomic_block or not is_outage(exc):
                raise
            logger.warning(
                "commit of claim %s failed; retrying on a fresh connection", claim.token, exc_info=True
            )
            connection_reset()
            time.sleep(attempt)
    raise AssertionError("unreachable")


# The drain loop --------------------------------------------------------------------------------------
@dataclass
class DrainRun:
    """One drain task's work on one job, shared by its lanes."""

    job: Job
    extractor: Extractor
    keeper: DrainKeeper
    claim_until: float  # time.monotonic(): no claim after this (the drain's budget)
    deadline: float | None  # time.monotonic(): chunks stop extracting (below the task timeout)
    on_chunk: Callable[[], None] | None = None


def process_one_chunk(
    job: Job,
    extractor: Extractor,
    *,
    after: int = 0,
    size: int | None = None,
    expired: bool = True,
    keeper: DrainKeeper | None = None,
    deadline: float | None = None,
) -> tuple[Claim, Committed] | None:
    """Claim (see chunk_claim), extract and commit one chunk; None when nothing was claimable."""
    claim = chunk_claim(job, after=after, size=size, expired=expired)
    if claim is None:
        return None
    control = JobControl(job.id, deadline=deadline)
    if keeper:
        keeper.hold(claim, control)
    try:
        try:
            outcomes = chunk_extract(user_ids=claim.user_ids, extractor=extractor, control=control)
        except ExtractorFatalError as exc:
            job_fail(job.id, str(exc), release_token=claim.token)
            _uncommitted_usage_keep(job, claim, control.usage)
            return claim, Committed(0, job_items_left(job.id))
        except Exception as exc:  # every user of the chunk shares the error
            error = _chunk_error(exc, claim, job)
            outcomes = [Outcome(user_id, None, error) for user_id in claim.user_ids]
        control.finished = True  # no more renewals: the commit takes the items' locks, then moves them
        committed = _commit_with_retries(claim, job, outcomes, extractor, control)
    finally:
        if keeper:
            keeper.release(claim)
    if committed.owned < len(claim.items):
        logger.warning(
            "job %s: %d items of claim %s were lost to an expired lease; their work was discarded, "
            "its tokens counted",
            job.id,
            len(claim.items) - committed.owned,
            claim.token,
        )
    return claim, committed


def _chunk_error(exc: Exception, claim: Claim, job: Job) -> ExtractionError:
    """An outage (the database, the broker or the network away) interrupts the chunk: its users are
    taken up again without spending an attempt. Anything else is a bug that every user of the
    chunk fails with, retried, counted toward fail-fast: a bug that hits every chunk fails the job."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    if is_outage(exc):
        logger.warning(
            "job %s: an outage cut chunk %s short (%s: %s); its users are taken up again",
            *(job.id, claim.token, type(exc).__name__, first_line),
        )
        if not connection.in_atomic_block:
            connection_reset()  # perhaps broken: the commit opens a fresh one
        return ExtractionError(
            f"interrupted by an outage ({type(exc).__name__}: {first_line})", interrupted=True
        )
    logger.exception("extracting chunk %s of job %s failed", claim.token, job.id)
    return ExtractionError(f"{type(exc).__name__}: {first_line}", kind=type(exc).__name__)


def drain_enter(job_id: int, drain_id: int | None = None) -> int | None:
    """Take one of the job's JOBS_DRAIN_TASKS drain places (`drain_id`: the place a continuation
    inherits, if it is still there); None when the job no longer runs, or live drains hold every
    place for JOBS_DRAIN_STALE_SECONDS (this drain is surplus: the bell was rung twice).

    A place that has not beaten for JOBS_DRAIN_STALE_SECONDS is given to this drain: its holder died
    or froze. Waiting that long for one lets a cluster that starts right after another died take
    over the dead drains' places at once.
    """
    stale = settings.JOBS_DRAIN_STALE_SECONDS
    give_up = time.monotonic() + stale
    while True:
        with transaction.atomic():
            alive = list(
                Job.objects.select_for_update()  # serialises the drains of one job here
                .filter(id=job_id, status__in=Job.WORKING)
                .values_list("id", flat=True)
            )
            if not alive:
                return None
            places = Drain.objects.filter(job_id=job_id)
            places.filter(seen_at__lt=DatabaseNow(-stale)).delete()
            if drain_id and places.filter(id=drain_id).update(seen_at=DatabaseNow()):
                return drain_id
            if places.count() < settings.JOBS_DRAIN_TASKS:
                return Drain.objects.create(job_id=job_id, started_at=DatabaseNow(), seen_at=DatabaseNow()).id
        if time.monotonic() >= give_up:
            return None
        time.sleep(min(1.0, stale))


def job_drain(
    job_id: int,
    *,
    drain_id: int | None = None,
    budget_seconds: float | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Work on one job until nothing is claimable, it stops running, or the time budget is spent.

    Runs as a django-q2 task, any number at once on any number of machines (at most
    JOBS_DRAIN_TASKS per job work; the others leave). When the budget is spent with work left, it
    enqueues its own continuation, which inherits its place; every chunk stops extracting
    JOBS_COMMIT_RESERVE_SECONDS before the task timeout and commits what it did. An extractor with
    several lanes (the LLM's) works on that many chunks at once, so its calls stay in flight while
    one chunk is loaded, packed or committed.
    """
    started = time.monotonic()
    budget = settings.JOBS_DRAIN_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        return
    if job.status not in Job.WORKING:
        job_finish_if_done(job_id)  # a cancel waits for the last chunk: this may be after it
        return
    try:  # before the job counts as started: a worker's first job imports the extractor's code
        extractor = make_extractor(job.extractor, job.options)
    except (UnknownExtractor, ValidationError, ExtractorFatalError) as exc:
        job_fail(job_id, f"cannot start extractor {job.extractor!r}: {exc}")
        return
    drain_id = drain_enter(job_id, drain_id)
    if drain_id is None:
        return
    keeper = DrainKeeper(drain_id)
    run = DrainRun(
        job,
        extractor,
        keeper,
        claim_until=started + budget,
        deadline=None
        if math.isinf(budget)
        else started + settings.Q_TIMEOUT - settings.JOBS_COMMIT_RESERVE_SECONDS,
        on_chunk=on_chunk,
    )
    continued = False
    try:
        job_mark_running(job_id)
        job.refresh_from_db()
        if connection.in_atomic_block:  # a caller's transaction (tests): no other thread could see its rows
            _drain_lane(run, lane=0)
        else:
            with keeper:
                if extractor.lanes == 1:
                    _drain_lane(run, lane=0)
                else:
                    with ThreadPoolExecutor(extractor.lanes, thread_name_prefix="lane") as pool:
                        lanes = [
                            pool.submit(_drain_lane, run, lane=lane, own_connection=True)
                            for lane in range(extractor.lanes)
                        ]
                        for lane in lanes:
                            lane.result()
        if time.monotonic() >= run.claim_until and not keeper.evicted and job_has_claimable_items(job_id):
            job_ring(job_id, tasks=1, drain_id=drain_id, mark=False)  # the budget is spent, work is left
            continued = True
    finally:
        if not continued:
            Drain.objects.filter(id=drain_id).delete()
    job_finish_if_done(job_id)


def _drain_lane(run: DrainRun, *, lane: int, own_connection: bool = False) -> None:
    """Claim, extract and commit chunks one after the other until there is nothing left, the time is
    up, or the drain lost its place. After an outage (a dropped connection, the database away) the
    lane waits, longer each time up to OUTAGE_BACKOFF_SECONDS[1], and tries again on a fresh
    connection. Expired leases are looked for at the start, every drain beat, after an outage, and
    whenever nothing pending is left.

    Of several lanes, the first starts with small claims that double up to the chunk size, so
    calls go out while the others load whole chunks. `own_connection`: this lane runs in a thread
    of its own, whose connection it closes at the end.
    """
    job, extractor = run.job, run.extractor
    after = 0  # where this lane's last claim ended
    size = max(1, job.chunk_size // 8) if lane == 0 and extractor.lanes > 1 else job.chunk_size
    left = job_items_left(job.id)
    expired_checked = -math.inf
    outages = 0  # in a row
    try:
        while not run.keeper.evicted:
            pause = None
            try:
                if time.monotonic() >= run.claim_until:
                    return
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
                if done:
                    claim, committed = done
                    after, size, left = claim.last_id, min(2 * size, job.chunk_size), committed.left
                    if run.on_chunk:
                        run.on_chunk()
                    if not committed.interrupted:
                        outages = 0
                        continue
                    outages, expired_checked = outages + 1, -math.inf  # its users come back at once
                    pause = _outage_pause(outages)
                elif after:  # look once more from the start: items skipped while locked, or backing off
                    after = 0
                    continue
                else:
                    wait = _seconds_until_next_retry(job.id)
                    if wait is None:
                        return
                    pause = min(max(wait, 0.05), 1.0)
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
            if time.monotonic() + pause >= run.claim_until:
                return
            time.sleep(pause)
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


def _seconds_until_next_retry(job_id: int) -> float | None:
    """When a pending item waiting out its backoff becomes claimable, if any does (database clock)."""
    if not Job.objects.filter(id=job_id, status=Job.Status.RUNNING).exists():
        return None
    next_retry = JobItem.objects.filter(job_id=job_id, status=JobItem.Status.PENDING).aggregate(
        at=Min("retry_at")
    )["at"]
    return None if next_retry is None else (next_retry - database_now()).total_seconds()


# Healing -------------------------------------------------------------------------------------------
def jobs_heal(*, force: bool = False) -> list[str]:
    """Bring every job back to health after any fault; idempotent, safe anywhere, any time, at once.

    Every cluster runs it when it starts (`force`: ring at once) and every JOBS_HEAL_SECONDS:
    - a stopped job keeps no pending or running items (left by a dead worker, or by older versions);
    - a job with nothing left is finished;
    - a queued or running job with claimable items and fewer than JOBS_DRAIN_TASKS live drains gets
      the missing ones rung (a lost queue message, a killed cluster's drains, a broker that was down).
    """
    return [*_stopped_jobs_sweep(), *_jobs_finish(), *_jobs_ring(force=force)]


def _stopped_jobs_sweep() -> list[str]:
    done = []
    stale = Q(status=JobItem.Status.PENDING) | Q(
        status=JobItem.Status.RUNNING, lease_expires_at__lt=DatabaseNow()
    )
    not_running = Job.objects.exclude(status__in=Job.WORKING)
    for job_id in not_running.filter(
        Exists(JobItem.objects.filter(stale, job_id=OuterRef("pk")))
    ).values_list("id", flat=True):
        with transaction.atomic():
            cancelled = JobItem.objects.filter(stale, job_id=job_id).update(
                status=JobItem.Status.CANCELLED,
                finished_at=timezone.now(),
                lease_expires_at=None,
                retry_at=None,
            )
            Job.objects.filter(id=job_id).update(cancelled_items=F("cancelled_items") + cancelled)
        done.append(f"job {job_id}: cancelled {cancelled} items a stopped job still held")
    return done


def _jobs_finish() -> list[str]:
    done = []
    nothing_running = ~Exists(JobItem.objects.filter(job_id=OuterRef("pk"), status=JobItem.Status.RUNNING))
    nothing_left = ~Exists(JobItem.objects.filter(job_id=OuterRef("pk"), status__in=JobItem.ACTIVE))
    ending = Job.objects.filter(
        Q(status__in=Job.WORKING) & nothing_left | Q(status=Job.Status.CANCELLING) & nothing_running
    )
    for job_id in ending.values_list("id", flat=True):
        job_mark_running(job_id)
        if status := job_finish_if_done(job_id):
            done.append(f"job {job_id}: nothing left, now {status}")
    return done


def _jobs_ring(*, force: bool) -> list[str]:
    """Ring the drains a job lacks. Rings made while a job stays short of drains (its drains wait
    behind other jobs' in the queue) back off, 1, 2, 4… × JOBS_DRAIN_STALE_SECONDS up to 32 ×, so
    the queue does not fill with surplus drains; a cluster that starts rings at once."""
    done = []
    stale = settings.JOBS_DRAIN_STALE_SECONDS
    live = Drain.objects.filter(job_id=OuterRef("pk"), seen_at__gte=DatabaseNow(-stale))
    claimable = JobItem.objects.filter(job_id=OuterRef("pk")).filter(_claimable())
    candidates = (
        Job.objects.filter(status__in=Job.WORKING)
        .filter(Exists(claimable))
        .annotate(live=Coalesce(_count(live), 0))
    )
    for job in candidates.only("id", "short_rings"):
        missing = settings.JOBS_DRAIN_TASKS - job.live
        if missing <= 0:
            if job.short_rings:
                Job.objects.filter(id=job.id).update(short_rings=0)
            continue
        ring = Job.objects.filter(id=job.id, short_rings=job.short_rings)  # unless another heal just rang
        if not force:
            wait = stale * 2 ** min(job.short_rings, 5)
            ring = ring.filter(Q(bell_rung_at__isnull=True) | Q(bell_rung_at__lt=DatabaseNow(-wait)))
        if not ring.update(bell_rung_at=DatabaseNow(), short_rings=F("short_rings") + 1):
            continue
        job_ring(job.id, tasks=missing, mark=False)
        done.append(f"job {job.id}: {job.live} live drains, rang {missing} more")
    return done


def _count(queryset) -> Subquery:
    """A correlated COUNT(*) subquery."""
    return Subquery(
        queryset.order_by().values("job_id").annotate(n=Count("id")).values("n"), output_field=IntegerField()
    )
