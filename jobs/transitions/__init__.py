"""Every change of a job's or an item's status, in one place.

Each is one conditional UPDATE naming the statuses it may leave, so that two actors racing for the
same change cannot both win, and returns whether (or to how many rows) it applied. The services,
the worker, healing and the admin call these; none of them writes a status itself.

A job's counters move in the same transaction as the items they count: whoever moves items here
moves the counters too. A job's end (completed, cancelled, failed) records its webhook event in the
same transaction (jobs.webhook_events), so no end is ever told twice or never. Statuses reach SQL
as parameters, never as literals.
"""

from .chunks import (
    MOVE_COLUMNS,
    Committed,
    items_claim,
    items_commit,
    items_fail_interrupted,
    items_interrupted,
    items_reclaim,
    job_streak_set,
)
from .jobs import (
    items_pending_cancel,
    items_released_sweep,
    items_resumable,
    items_stopped_sweep,
    job_cancel_request,
    job_complete_empty,
    job_fail,
    job_finish_if_done,
    job_mark_running,
    job_reopen,
)

__all__ = [
    "MOVE_COLUMNS",
    "Committed",
    "items_claim",
    "items_commit",
    "items_fail_interrupted",
    "items_interrupted",
    "items_pending_cancel",
    "items_reclaim",
    "items_released_sweep",
    "items_resumable",
    "items_stopped_sweep",
    "job_cancel_request",
    "job_complete_empty",
    "job_fail",
    "job_finish_if_done",
    "job_mark_running",
    "job_reopen",
    "job_streak_set",
]
