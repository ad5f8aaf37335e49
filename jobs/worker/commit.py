"""A chunk's commit: its users' outcomes, fenced by the claim's token, in one transaction.

A handful of statements whatever the chunk's size: the items move to their outcome (only those
that still carry the claim's token: a lost lease throws the work away), the succeeded users' new
events replace their old ones, and the job's counters move by the same amounts, last (the job's
row is the last lock taken), reading the job's status under that lock: a cancel or a failure that
committed meanwhile is seen, never missed.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Value, When

from eventproject.db import connection_reset
from eventproject.outages import is_outage
from extraction.extractors import ExtractionError, Extractor
from extraction.services import Outcome, extraction_failures_record, extraction_results_write
from ops import metrics

from .. import transitions
from ..models import Job, JobItem
from .claims import Claim, ClaimedItem, job_items_left

logger = logging.getLogger(__name__)

COMMIT_TRIES = 5  # a commit is retried on a fresh connection: the fence makes it idempotent


@dataclass(frozen=True)
class Committed:
    """What a chunk's commit did: how many items it still owned, how many of the job's items are
    left to do (for the size of the next claim), and whether an outage cut the chunk short."""

    owned: int
    left: int
    interrupted: bool = False


class Move(NamedTuple):
    """Where one claimed item goes (the rows of transitions.MOVE_COLUMNS)."""

    id: int
    status: str
    error: str
    events: int | None
    backoff: float | None  # seconds before it may be claimed again (a retry)
    undo: int  # 1: the attempt its claim started does not count (it was never tried)
    prompt: int
    completion: int
    reasoning: int


def retry_backoff_seconds(attempts: int) -> float:
    """JOBS_RETRY_BACKOFF_SECONDS after the first attempt, doubling after each one, never above
    JOBS_RETRY_BACKOFF_MAX_SECONDS (minutes, not months; and no overflow at any attempt count)."""
    base, cap = settings.JOBS_RETRY_BACKOFF_SECONDS, settings.JOBS_RETRY_BACKOFF_MAX_SECONDS
    return min(base * 2 ** min(max(attempts - 1, 0), 32), cap)


def move_of(item: ClaimedItem, outcome: Outcome, job: Job) -> Move:
    """One claimed item's move for its outcome: succeeded; interrupted (reclaimed at once, its
    attempt going on); never tried (back to pending, not an attempt); failed for good (permanent,
    or out of attempts); or retried after a backoff."""
    tokens = (outcome.prompt_tokens, outcome.completion_tokens, outcome.reasoning_tokens)
    error = outcome.result
    if not isinstance(error, ExtractionError):  # succeeded
        return Move(item.id, JobItem.Status.SUCCEEDED, "", outcome.events, None, 0, *tokens)
    if error.interrupted:
        return Move(item.id, JobItem.Status.RUNNING, error.message, None, None, 0, *tokens)
    if error.stopped:
        return Move(item.id, JobItem.Status.PENDING, "", None, None, 1, *tokens)
    if error.permanent or item.attempts >= job.max_attempts:
        return Move(item.id, JobItem.Status.FAILED, error.message, None, None, 0, *tokens)
    backoff = retry_backoff_seconds(item.attempts)
    return Move(item.id, JobItem.Status.PENDING, error.message, None, backoff, 0, *tokens)


def chunk_commit(
    claim: Claim, job: Job, outcomes: Sequence[Outcome], extractor: Extractor, *, seconds: float = 0.0
) -> Committed:
    """Commit a chunk's outcomes (one per claimed item, in the claim's order) for the items this
    claim still owns; `seconds`: how long the chunk took, for the job's fair share. The tokens of
    items another claim took (a lost lease) are kept too: paid is paid.

    Optimistic: the succeeded users' results are written first, then the items and the job's
    counters move in one statement, the job's row the last lock taken. Should another claim have
    taken some items meanwhile (a lost lease, rare), all of it rolls back and the commit goes again
    the careful way: the items first (the fence says which are still ours), then their results."""
    moves = [move_of(item, outcome, job) for item, outcome in zip(claim.items, outcomes, strict=True)]
    done = _commit_once(claim, job, moves, outcomes, extractor, seconds, optimistic=True)
    if done is None:
        done = _commit_once(claim, job, moves, outcomes, extractor, seconds, optimistic=False)
        assert done is not None  # (only the optimistic commit rolls back)
    if taken := _taken(claim, done.owned):
        uncommitted_usage_keep(job, claim, outcomes, lost=taken)
    left = job_items_left(job.id) if done.left is None else done.left
    interrupted = any(m.status == JobItem.Status.RUNNING for m in moves)
    return Committed(len(done.owned), left, interrupted)


def _commit_once(
    claim: Claim,
    job: Job,
    moves: list[Move],
    outcomes: Sequence[Outcome],
    extractor: Extractor,
    seconds: float,
    *,
    optimistic: bool,
) -> transitions.Committed | None:
    """One transaction of chunk_commit; None when the optimistic one found items taken (rolled back)."""
    with transaction.atomic():
        if optimistic:
            extraction_results_write(outcomes=outcomes, extractor=extractor)  # succeeded users only
        done = transitions.items_commit(job.id, claim.token, [m._asdict() for m in moves], seconds=seconds)
        if optimistic and len(done.owned) < len(claim.items) and any(o.succeeded for o in outcomes):
            transaction.set_rollback(True)
            return None
        mine = [(m, o) for m, o in zip(moves, outcomes, strict=True) if m.id in done.owned]
        if not optimistic:
            extraction_results_write(outcomes=[o for _, o in mine], extractor=extractor)
        if failed := {o.user_id: m.error for m, o in mine if m.status == JobItem.Status.FAILED}:
            extraction_failures_record(errors=failed)
        if mine:
            status = _streak_move(job, done, mine)
            if status not in Job.WORKING:  # cancelled or failed meanwhile (a resume makes it queued)
                transitions.items_released_sweep(job.id, done.owned)
            retried = sum(1 for m, _ in mine if m.backoff is not None)
            metrics.count(metrics.ITEM_RETRIES, retried)  # last: a counter row is the last lock taken
    return done


def _taken(claim: Claim, owned: set[int]) -> set[int]:
    """The claim's items another claim took (its lease ran out). Items still carrying this claim's
    token but no longer running were committed by an earlier try of this very commit
    (commit_with_retries): they are not lost."""
    if len(owned) == len(claim.items):
        return set()
    ids = [item.id for item in claim.items if item.id not in owned]
    taken = set(
        JobItem.objects.filter(id__in=ids).exclude(claim_token=claim.token).values_list("id", flat=True)
    )
    metrics.count(metrics.LEASE_LOST, len(taken))
    return taken


def uncommitted_usage_keep(
    job: Job, claim: Claim, outcomes: Sequence[Outcome], *, lost: Collection[int] | None = None
) -> None:
    """Tokens are paid even when the work is thrown away (a lost lease, a failed job): add those of
    the `lost` items (default: all the claim's) to the items and the job, so the job's cost stays
    true. Its own short transaction, items before the job row, like every commit."""
    spent = {
        item.id: o
        for item, o in zip(claim.items, outcomes, strict=True)
        if (lost is None or item.id in lost) and (o.prompt_tokens or o.completion_tokens)
    }
    if not spent:
        return
    with transaction.atomic():
        JobItem.objects.filter(id__in=list(spent)).update(
            prompt_tokens=F("prompt_tokens") + _per_item({i: o.prompt_tokens for i, o in spent.items()}),
            completion_tokens=F("completion_tokens")
            + _per_item({i: o.completion_tokens for i, o in spent.items()}),
        )
        Job.objects.filter(id=job.id).update(
            prompt_tokens=F("prompt_tokens") + sum(o.prompt_tokens for o in spent.values()),
            completion_tokens=F("completion_tokens") + sum(o.completion_tokens for o in spent.values()),
            reasoning_tokens=F("reasoning_tokens") + sum(o.reasoning_tokens for o in spent.values()),
        )


def _per_item(values: dict[int, Any]) -> Case:
    """A CASE giving each item id its value, with one WHEN per distinct value."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for item_id, value in values.items():
        groups[value].append(item_id)
    return Case(*(When(id__in=ids, then=Value(value)) for value, ids in groups.items()))


def _streak_move(job: Job, done: transitions.Committed, mine: list[tuple[Move, Outcome]]) -> str | None:
    """Add this commit's errors (those about the users: not outages, not stops) to the job's
    fail-fast streak, which a success reset; fail the job when the streak is too long. Returns the
    job's status as the commit saw it under the job's row lock (failed, if this failed it)."""
    errors = [o.result for _, o in mine if isinstance(o.result, ExtractionError) and o.result.counts]
    if not errors:
        return done.status
    streak, kind = done.streak
    for error in errors:
        streak, kind = (streak + 1, kind) if error.kind == kind else (1, error.kind)
    transitions.job_streak_set(job.id, streak, kind, errors[-1].message)
    if streak >= settings.JOBS_FAIL_FAST_AFTER:
        message = (
            f"{streak} items in a row failed with the same kind of error ({kind}); "
            f"the last one: {errors[-1].message}"
        )
        if transitions.job_fail(job.id, message):
            return Job.Status.FAILED
    return done.status


def commit_with_retries(
    claim: Claim, job: Job, outcomes: Sequence[Outcome], extractor: Extractor, *, seconds: float = 0.0
) -> Committed:
    """chunk_commit, tried again on a fresh connection when an outage cuts it short: the fence makes
    a second try commit nothing twice (a first try that did commit left no item running with this
    token)."""
    for attempt in range(1, COMMIT_TRIES + 1):
        try:
            return chunk_commit(claim, job, outcomes, extractor, seconds=seconds)
        except Exception as exc:
            if attempt == COMMIT_TRIES or connection.in_atomic_block or not is_outage(exc):
                raise
            logger.warning(
                "commit of claim %s failed; retrying on a fresh connection", claim.token, exc_info=True
            )
            connection_reset()
            time.sleep(attempt)
    raise AssertionError("unreachable")
