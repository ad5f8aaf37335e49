"""Claims: a chunk of a job's items taken under a fresh token and a lease on the database's clock.

Pending items are claimed in id order above where this lane's last claim ended. Items whose claim
was interrupted (their worker died or froze past its lease, or an outage cut their chunk short)
are claimed again in claims of their own, going on with the attempt they were on, in halving
claims: a user that stops every worker taking it (a poison pill) is soon alone, and fails.
"""

import uuid
from dataclasses import dataclass
from typing import NamedTuple

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet

from eventproject.db import DatabaseNow
from extraction.services import extraction_failures_record
from ops import metrics

from .. import transitions
from ..models import Job, JobItem


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


def chunk_claim(job: Job, *, after: int = 0, size: int | None = None, expired: bool = True) -> Claim | None:
    """Claim up to `size` (the job's chunk size) claimable items of a running job: with `expired`,
    interrupted items first (see _interrupted_reclaim), a claim of their own; else pending ones with
    an id above `after` (where this lane's previous claim ended), in one statement."""
    size = size or job.chunk_size
    token = uuid.uuid4()
    rows = _interrupted_reclaim(job, token, size) if expired else []
    if not rows:
        rows = transitions.items_claim(job.id, token, after=after, limit=size)
    return Claim(job.id, token, sorted(ClaimedItem(*row) for row in rows)) if rows else None


def _interrupted_reclaim(job: Job, token: uuid.UUID, size: int) -> list[tuple]:
    """Claim interrupted items of a running job, at most interrupted_claim_size of them; those
    interrupted too often fail instead. Workers look for these every few seconds, not at every
    claim: a dead worker's chunk waits out its lease anyway."""
    with transaction.atomic():
        interrupted = transitions.items_interrupted(job.id, size)
        if not interrupted:
            return []
        limit = interruption_limit(job)
        if exhausted := [item_id for item_id, count in interrupted if count + 1 >= limit]:
            message = interrupted_failure(limit, job)
            users = transitions.items_fail_interrupted(job.id, exhausted, message)
            extraction_failures_record(errors=dict.fromkeys(users, message))
        rows = []
        if again := [(item_id, count) for item_id, count in interrupted if count + 1 < limit]:
            reclaim = again[: interrupted_claim_size(job, max(count + 1 for _, count in again))]
            rows = transitions.items_reclaim(job.id, token, [item_id for item_id, _ in reclaim])
        metrics.count(metrics.LEASE_EXPIRED, len(interrupted))  # last: a counter row is the last lock taken
    return rows


def jobs_with_claimable(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """Those of `jobs` with a claimable item (pending past its backoff, or running on a lease that
    ran out, on the database's clock), found by two EXISTS, one per partial index: one EXISTS over
    an OR of the two made PostgreSQL gather every pending item of a job of millions before it
    answered (1.5 s at 10,000,000 items, at every pick)."""
    now = DatabaseNow()
    items = JobItem.objects.filter(job_id=OuterRef("pk"))
    pending = items.filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now), status=JobItem.Status.PENDING)
    expired = items.filter(status=JobItem.Status.RUNNING, lease_expires_at__lt=now)
    return jobs.filter(Exists(pending) | Exists(expired))


def job_items_left(job_id: int) -> int:
    """Items of the job not finished yet, by its counters."""
    finished = F("succeeded_items") + F("failed_items") + F("cancelled_items")
    return Job.objects.filter(id=job_id).values_list(F("total_items") - finished, flat=True).first() or 0
