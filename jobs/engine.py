"""The worker side of the job engine: claim a chunk with a lease, extract, commit fenced by the token.

job_drain()          the loop a django-q2 task runs: process chunks until nothing is
                     claimable, the job stops running, or the time budget is spent
process_one_chunk()  one unit of work; returns the claim it worked on, None if there was none
chunk_claim()        DESIGN §2: one short transaction stamps a token, a lease, attempts + 1
chunk_commit()       DESIGN §3: events and item statuses commit only for items that still
                     carry this worker's token; a lost lease throws the work away
"""

import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, F, Min, Value, When
from django.utils import timezone

from eventproject.db import datetime_adapter, is_postgresql
from extraction.extractors import (
    Control,
    ExtractionError,
    Extractor,
    ExtractorFatalError,
    UnknownExtractor,
    make_extractor,
)
from extraction.services import chunk_extract, extraction_failures_record, extraction_results_save
from ops import metrics

from . import services
from .models import Job, JobItem

logger = logging.getLogger(__name__)

LEASE_LOST = "the worker processing this user stopped or lost its lease"


@dataclass(frozen=True)
class Claim:
    job_id: int
    token: uuid.UUID
    items: list[tuple[int, str, int]]  # (item id, user id, attempts including this one), by id

    @property
    def user_ids(self) -> list[str]:
        return [user_id for _, user_id, _ in self.items]

    @property
    def last_id(self) -> int:
        return self.items[-1][0]


def _stamp_sql(chosen: str) -> str:
    """Stamp a new claim on the items `chosen` (a subquery of ids) and return them."""
    return (
        f"UPDATE {JobItem._meta.db_table} SET status = 'running', claim_token = %(token)s, "
        f"lease_expires_at = %(lease)s, attempts = attempts + 1, started_at = %(now)s, retry_at = NULL "
        f"WHERE id IN ({chosen}) RETURNING id, user_id, attempts"
    )


def _pending_sql() -> str:
    """Up to %(limit)s claimable pending items of the job above id %(after)s, if the job is running
    (the cancel check). The lower bound keeps the cost of a claim flat as a job advances, whichever
    index the planner picks: without it, PostgreSQL sometimes walks the primary key from the start
    through every item already done (measured: 77 ms per claim after 200,000 of 1,000,000 items).

    PostgreSQL: FOR UPDATE SKIP LOCKED lets workers claim different rows at once.
    SQLite: the IMMEDIATE transaction already serialises writers.
    """
    lock = "FOR UPDATE SKIP LOCKED" if is_postgresql() else ""
    return (
        f"SELECT id FROM {JobItem._meta.db_table} "
        f"WHERE job_id = %(job)s AND status = 'pending' AND id > %(after)s "
        f"AND (retry_at IS NULL OR retry_at <= %(now)s) "
        f"AND EXISTS (SELECT 1 FROM {Job._meta.db_table} WHERE id = %(job)s AND status = 'running') "
        f"ORDER BY id LIMIT %(limit)s {lock}"
    )


def chunk_claim(
    job: Job, *, after: int = 0, size: int | None = None, now: datetime | None = None
) -> Claim | None:
    """Claim up to `size` (the job's chunk size) claimable items of a running job: expired leases
    first, then pending ones with an id above `after` (where this worker's previous claim ended).

    Items whose lease expired on their last allowed attempt fail here instead.
    """
    now = now or timezone.now()
    size = size or job.chunk_size
    token = uuid.uuid4()
    db_datetime = datetime_adapter()
    params = {
        "token": token if is_postgresql() else token.hex,  # as Django's UUIDField stores it
        "lease": db_datetime(now + timedelta(seconds=settings.JOBS_LEASE_SECONDS)),
        "now": db_datetime(now),
        "job": job.id,
        "limit": size,
        "after": after,
    }
    with transaction.atomic():
        expired = dict(
            JobItem.objects.select_for_update(skip_locked=True, of=("self",))  # not the job's row
            .filter(
                job_id=job.id,
                job__status=Job.Status.RUNNING,
                status=JobItem.Status.RUNNING,
                lease_expires_at__lt=now,
            )
            .values_list("id", "attempts")[:size]
        )
        exhausted = [item_id for item_id, attempts in expired.items() if attempts >= job.max_attempts]
        if exhausted:
            _fail_exhausted_leases(job, exhausted, now)
        reclaim = [item_id for item_id in expired if item_id not in exhausted]
        rows = []
        with connection.cursor() as cursor:
            if reclaim:
                cursor.execute(_stamp_sql(", ".join(map(str, reclaim))), params)
                rows = cursor.fetchall()
            if len(rows) < size:
                cursor.execute(_stamp_sql(_pending_sql()), {**params, "limit": size - len(rows)})
                rows += cursor.fetchall()
        metrics.count(metrics.LEASE_EXPIRED, len(expired))  # last: a counter row is the last lock taken
    if not rows:
        return None
    return Claim(job.id, token, sorted(rows))


def _fail_exhausted_leases(job: Job, item_ids: list[int], now: datetime) -> None:
    """Items whose lease ran out on their last allowed attempt fail (their worker died each time)."""
    items = JobItem.objects.filter(id__in=item_ids, status=JobItem.Status.RUNNING)
    user_ids = list(items.values_list("user_id", flat=True))
    failed = items.update(
        status=JobItem.Status.FAILED, finished_at=now, lease_expires_at=None, error=LEASE_LOST
    )
    Job.objects.filter(id=job.id).update(failed_items=F("failed_items") + failed)
    extraction_failures_record(errors=dict.fromkeys(user_ids, LEASE_LOST))


class JobControl(Control):
    """The job as a long extraction sees it. Its status is asked at most once a second; its
    committed tokens afresh each time (only asked when a token cap is set, once per call), so the
    cap overshoots by no more than the calls in flight and the chunks not yet committed.

    Called from the extractor's threads too, each with its own connection.
    """

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id
        self.checked_at = -1.0
        self.status = Job.Status.RUNNING

    def stopped(self) -> bool:
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
        services.job_fail(self.job_id, message)
        with self.lock:
            self.status = Job.Status.FAILED


class LeaseKeeper:
    """Extends a claim's lease from a background thread while a slow chunk is being extracted."""

    def __init__(self, claim: Claim):
        self.claim = claim
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{claim.token}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        interval = settings.JOBS_LEASE_SECONDS / 3
        try:
            while not self.stopped.wait(interval):
                JobItem.objects.filter(claim_token=self.claim.token, status=JobItem.Status.RUNNING).update(
                    lease_expires_at=timezone.now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS)
                )
        except Exception:  # the lease then simply runs out and the items are re-claimed
            logger.exception("could not extend the lease of claim %s", self.claim.token)
        finally:
            connection.close()


def chunk_commit(
    claim: Claim, job: Job, results: dict, extractor: Extractor, *, usage: dict[str, list[int]] | None = None
) -> int:
    """Commit a chunk's outcomes for the items this claim still owns; returns how many it owned.

    In one transaction: new events replace old ones for succeeded users, items get their final
    (or retry) status and the tokens paid for them (`usage`, from Control.usage), and the job's
    counters move by the same amounts. The tokens of items lost to an expired lease are kept too.
    """
    owned = _owned_commit(claim, job, results, extractor, usage or {})
    metrics.count(metrics.LEASE_LOST, len(claim.items) - len(owned))
    if usage and len(owned) < len(claim.items):
        _uncommitted_usage_keep(job, claim, usage, committed=owned)
    return len(owned)


def _owned_commit(claim: Claim, job: Job, results: dict, extractor: Extractor, usage) -> set[int]:
    now = timezone.now()
    with transaction.atomic():
        owned = set(
            JobItem.objects.select_for_update()
            .filter(
                id__in=[item_id for item_id, _, _ in claim.items],
                claim_token=claim.token,
                status=JobItem.Status.RUNNING,
            )
            .values_list("id", flat=True)
        )
        if not owned:
            return owned
        succeeded, failed, retried, stopped = {}, {}, {}, []
        saved = []
        for item_id, user_id, attempts in claim.items:
            if item_id not in owned:
                continue
            user, result = results.get(
                user_id, (None, ExtractionError("unknown user: no profile", permanent=True))
            )
            if not isinstance(result, ExtractionError):
                succeeded[item_id] = len(result)
                saved.append((user, result))
            elif result.stopped:
                stopped.append(item_id)
            elif result.permanent or attempts >= job.max_attempts:
                failed[item_id] = (user_id, result.message)
            else:
                retried[item_id] = (user_id, result.message)
        extraction_results_save(outcomes=saved, extractor=extractor)
        if failed:
            extraction_failures_record(errors=dict(failed.values()))
        mine = JobItem.objects.filter(claim_token=claim.token, status=JobItem.Status.RUNNING)
        if succeeded:
            mine.filter(id__in=list(succeeded)).update(
                status=JobItem.Status.SUCCEEDED,
                finished_at=now,
                lease_expires_at=None,
                error="",
                event_count=_per_item(succeeded),
            )
        if failed:
            mine.filter(id__in=list(failed)).update(
                status=JobItem.Status.FAILED,
                finished_at=now,
                lease_expires_at=None,
                error=_per_item({i: message for i, (_, message) in failed.items()}),
            )
        if retried:
            backoff = timedelta(seconds=settings.JOBS_RETRY_BACKOFF_SECONDS)
            mine.filter(id__in=list(retried)).update(
                status=JobItem.Status.PENDING,
                lease_expires_at=None,
                # Exponential backoff: 1, 2, 4… times the base after the 1st, 2nd, 3rd… attempt.
                retry_at=_per_item(
                    {i: now + backoff * 2 ** (attempts - 1) for i, _, attempts in claim.items if i in retried}
                ),
                error=_per_item({i: message for i, (_, message) in retried.items()}),
            )
        cancelled = _stopped_release(job, mine.filter(id__in=stopped), now) if stopped else 0
        tokens = _usage_record(claim, usage, owned)
        errors = [message for _, message in failed.values()] + [message for _, message in retried.values()]
        _job_counters_move(
            job,
            succeeded=len(succeeded),
            failed=len(failed),
            cancelled=cancelled,
            events=sum(succeeded.values()),
            errors=errors,
            tokens=tokens,
        )
        metrics.count(metrics.ITEM_RETRIES, len(retried))
    return owned


def _stopped_release(job: Job, items, now) -> int:
    """Items never tried because the job stopped: back to pending if it still runs (not an attempt),
    else cancelled. Returns how many were cancelled."""
    if Job.objects.filter(id=job.id, status=Job.Status.RUNNING).exists():
        items.update(status=JobItem.Status.PENDING, lease_expires_at=None, attempts=F("attempts") - 1)
        return 0
    return items.update(status=JobItem.Status.CANCELLED, lease_expires_at=None, finished_at=now)


def _usage_record(claim: Claim, usage: dict[str, list[int]], item_ids: Collection[int]) -> tuple[int, int]:
    """Add the tokens the extractor spent on these items' users to the items; return the totals."""
    spent = {
        item_id: usage[user_id]
        for item_id, user_id, _ in claim.items
        if item_id in item_ids and user_id in usage
    }
    if not spent:
        return 0, 0
    JobItem.objects.filter(id__in=list(spent)).update(
        prompt_tokens=F("prompt_tokens") + _per_item({i: p for i, (p, _) in spent.items()}),
        completion_tokens=F("completion_tokens") + _per_item({i: c for i, (_, c) in spent.items()}),
    )
    return sum(p for p, _ in spent.values()), sum(c for _, c in spent.values())


def _uncommitted_usage_keep(
    job: Job, claim: Claim, usage: dict[str, list[int]], *, committed: Collection[int] = ()
) -> None:
    """Tokens are paid even when the work is thrown away (a lost lease, a failed job): add those of
    the claim's other items to the items and the job, so the job's cost stays true. Its own short
    transaction, items before the job row, like every commit."""
    lost = {item_id for item_id, _, _ in claim.items if item_id not in committed}
    with transaction.atomic():
        prompt, completion = _usage_record(claim, usage, lost)
        if prompt or completion:
            Job.objects.filter(id=job.id).update(
                prompt_tokens=F("prompt_tokens") + prompt,
                completion_tokens=F("completion_tokens") + completion,
            )


def _per_item(values: dict[int, Any]) -> Case:
    """A CASE giving each item id its value, with one WHEN per distinct value (chunks repeat few)."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for item_id, value in values.items():
        groups[value].append(item_id)
    return Case(*(When(id__in=ids, then=Value(value)) for value, ids in groups.items()))


def _job_counters_move(
    job: Job,
    *,
    succeeded: int,
    failed: int,
    cancelled: int = 0,
    events: int,
    errors: list[str],
    tokens: tuple[int, int] = (0, 0),
) -> None:
    """Move the job's counters and its fail-fast streak; fail the job when the streak is too long."""
    counters = {
        "succeeded_items": F("succeeded_items") + succeeded,
        "failed_items": F("failed_items") + failed,
        "cancelled_items": F("cancelled_items") + cancelled,
        "event_count": F("event_count") + events,
        "prompt_tokens": F("prompt_tokens") + tokens[0],
        "completion_tokens": F("completion_tokens") + tokens[1],
    }
    if not errors:  # the common case: no need to read the streak first
        Job.objects.filter(id=job.id).update(**counters, error_streak=0, error_streak_message="")
        return
    current = Job.objects.select_for_update().only("error_streak", "error_streak_message").get(id=job.id)
    streak, message = current.error_streak, current.error_streak_message
    if succeeded:
        streak, message = 0, ""
    for error in errors:
        streak, message = (streak + 1, message) if error == message else (1, error)
    Job.objects.filter(id=job.id).update(**counters, error_streak=streak, error_streak_message=message)
    if streak >= settings.JOBS_FAIL_FAST_AFTER:
        services.job_fail(job.id, f"{streak} items in a row failed with: {message}")


def process_one_chunk(
    job: Job, extractor: Extractor, *, after: int = 0, size: int | None = None
) -> Claim | None:
    """Claim (see chunk_claim), extract and commit one chunk; None when nothing was claimable."""
    claim = chunk_claim(job, after=after, size=size)
    if claim is None:
        return None
    control = JobControl(job.id)
    with LeaseKeeper(claim):
        try:
            outcomes = chunk_extract(user_ids=claim.user_ids, extractor=extractor, control=control)
            results = {user.user_id: (user, result) for user, result in outcomes}
        except ExtractorFatalError as exc:
            services.job_fail(job.id, str(exc), release_token=claim.token)
            _uncommitted_usage_keep(job, claim, control.usage)
            return claim
        except Exception as exc:  # an outage or a bug: every user of the chunk gets a retryable error
            logger.exception("extracting chunk %s of job %s failed", claim.token, job.id)
            error = ExtractionError(f"{type(exc).__name__}: {exc}")
            results = {user_id: (None, error) for user_id in claim.user_ids}
        owned = chunk_commit(claim, job, results, extractor, usage=control.usage)
    if owned < len(claim.items):
        logger.warning(
            "job %s: %d items of claim %s were lost to an expired lease; their work was discarded, "
            "its tokens counted",
            job.id,
            len(claim.items) - owned,
            claim.token,
        )
    return claim


def job_drain(
    job_id: int, *, budget_seconds: float | None = None, on_chunk: Callable[[], None] | None = None
) -> None:
    """Work on one job until nothing is claimable, it stops running, or the time budget is spent.

    Runs as a django-q2 task, any number at once on any number of machines. When the budget
    is spent with work left, it enqueues its own continuation (staying under the task timeout).
    An extractor with several lanes (the LLM's) works on that many chunks at once, so its calls
    stay in flight while one chunk is loaded, packed or committed.
    """
    budget = settings.JOBS_DRAIN_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        return
    try:  # before the job counts as started: a worker's first job imports the extractor's code
        extractor = make_extractor(job.extractor, job.options)
    except (UnknownExtractor, ValidationError, ExtractorFatalError) as exc:
        services.job_fail(job_id, f"cannot start extractor {job.extractor!r}: {exc}")
        return
    services.job_mark_running(job_id)
    job.refresh_from_db()
    if extractor.lanes == 1 or connection.in_atomic_block:  # in a caller's transaction: this thread only
        _drain_lane(job, extractor, deadline, on_chunk, lane=0)
    else:
        with ThreadPoolExecutor(extractor.lanes, thread_name_prefix="lane") as pool:
            lanes = [
                pool.submit(_drain_lane, job, extractor, deadline, on_chunk, lane=lane, own_connection=True)
                for lane in range(extractor.lanes)
            ]
            for lane in lanes:
                lane.result()
    services.job_finish_if_done(job_id)


def _drain_lane(
    job: Job, extractor: Extractor, deadline: float, on_chunk, *, lane: int, own_connection: bool = False
) -> None:
    """Claim, extract and commit chunks one after the other until there is nothing left or time is up.

    Of several lanes, the first starts with small claims that double up to the chunk size, so
    calls go out while the others load whole chunks. `own_connection`: this lane runs in a thread
    of its own, whose connection it closes at the end.
    """
    after = 0  # where this lane's last claim ended
    size = max(1, job.chunk_size // 8) if lane == 0 and extractor.lanes > 1 else job.chunk_size
    try:
        while True:
            if time.monotonic() >= deadline:
                if services.job_has_claimable_items(job.id):
                    services.job_ring(job.id, tasks=1)
                return
            if claim := process_one_chunk(
                job, extractor, after=after, size=_claim_size(job, size, extractor)
            ):
                after, size = claim.last_id, min(2 * size, job.chunk_size)
                if on_chunk:
                    on_chunk()
                continue
            if after:  # look once more from the start: items skipped while locked, or backing off
                after = 0
                continue
            wait = _seconds_until_next_retry(job.id)
            if wait is None or time.monotonic() + wait >= deadline:
                return
            time.sleep(min(max(wait, 0.05), 1.0))
    finally:
        if own_connection:
            connection.close()


def _claim_size(job: Job, size: int, extractor: Extractor) -> int:
    """Guided self-scheduling: no claim above an even share of the items left among the lanes that
    may be working, so the last chunks are small and the workers finish together (instead of one
    working through a whole chunk alone while the others idle)."""
    finished = F("succeeded_items") + F("failed_items") + F("cancelled_items")
    left = Job.objects.filter(id=job.id).values_list(F("total_items") - finished, flat=True).first() or 0
    return max(1, min(size, math.ceil(left / (settings.JOBS_DRAIN_TASKS * extractor.lanes))))


def _seconds_until_next_retry(job_id: int) -> float | None:
    """When a pending item waiting out its backoff becomes claimable, if any does."""
    if not Job.objects.filter(id=job_id, status=Job.Status.RUNNING).exists():
        return None
    next_retry = JobItem.objects.filter(job_id=job_id, status=JobItem.Status.PENDING).aggregate(
        at=Min("retry_at")
    )["at"]
    return None if next_retry is None else (next_retry - timezone.now()).total_seconds()
