"""One unit of a worker's work: claim a chunk, extract it, commit it."""

import logging
import time

from django.db import connection

from eventproject.db import connection_reset
from eventproject.outages import is_outage
from extraction.extractors import ExtractionError, Extractor, ExtractorFatalError
from extraction.services import chunk_extract, outcome_of

from .. import transitions
from ..models import Job
from .claims import Claim, chunk_claim, job_items_left
from .commit import Committed, commit_with_retries, uncommitted_usage_keep
from .control import JobControl
from .keeper import DrainKeeper

logger = logging.getLogger(__name__)


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
    started = time.monotonic()
    control = JobControl(job.id, deadline=deadline)
    if keeper:
        keeper.hold(claim, control)
    try:
        try:
            outcomes = chunk_extract(user_ids=claim.user_ids, extractor=extractor, control=control)
        except ExtractorFatalError as exc:
            transitions.job_fail(job.id, str(exc), release_token=claim.token)
            failed = ExtractionError(str(exc))
            uncommitted_usage_keep(job, claim, [outcome_of(u, None, failed, control) for u in claim.user_ids])
            return claim, Committed(0, job_items_left(job.id))
        except Exception as exc:  # every user of the chunk shares the error
            error = _chunk_error(exc, claim, job)
            outcomes = [outcome_of(user_id, None, error, control) for user_id in claim.user_ids]
        control.finished = True  # no more renewals: the commit takes the items' locks, then moves them
        committed = commit_with_retries(claim, job, outcomes, extractor, seconds=time.monotonic() - started)
    finally:
        if keeper:
            keeper.release(claim)
    if committed.owned < len(claim.items):
        logger.warning(
            "job %s: %d items of claim %s were lost to an expired lease; their work was discarded, "
            "its tokens counted",
            *(job.id, len(claim.items) - committed.owned, claim.token),
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
