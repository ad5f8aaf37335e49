"""Claimable work: the one mechanism behind every piece of background work (a job's drains and
items, an import, a webhook delivery).

- **The table is the truth, the queue a doorbell.** A task carries only a row's id; `ring()`
  enqueues it once the caller's transaction commits, and a broker that cannot take it loses
  nothing: the row says the work is due, and healing rings again.
- **A claim is one conditional UPDATE** (`claim()`): it stamps a fresh token and a lease on the
  database's clock and answers the bell (`rung_at` cleared), so two workers never hold the same
  work, and a worker that dies leaves a lease that runs out.
- **Every write of the holder is fenced by its token** (`held()`): a worker that lost its lease
  (frozen, cut off) writes nothing once another took the work over.
- **Leases are renewed by time** from a thread of their own (eventproject.leases.LeaseKeeper).
- **Healing rings what went unanswered** (`bells_heal()`): due rows whose bell is older than a
  quiet time; one cluster rings each, the one whose conditional update still finds it unanswered.
- **A stopping cluster's work ends at its next checkpoint** (`cluster_stopping()`), as when its
  time budget is spent: it saves what it did and rings its continuation.
"""

import ctypes
import functools
import logging
import multiprocessing
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Model, Q, QuerySet

from .db import DatabaseNow

logger = logging.getLogger(__name__)

# Set when this worker's cluster begins to stop (SIGTERM or Ctrl-C to its main process: a restart,
# an upgrade). django-q2 waits for each worker's task before a cluster stops, and a drain or an
# import runs for minutes: a busy cluster outlived any stop timeout and was always killed. Made
# when this module is first imported, in the cluster's main process before it forks (jobs'
# qcluster command imports it), so every worker shares its memory. A byte without a lock: read
# at every chunk and call, it must not hang on a lock a killed worker held (as a
# multiprocessing.Event's would), and it is set from a signal handler. Nothing sets it in other
# processes.
_CLUSTER_STOPPING = multiprocessing.get_context("fork").RawValue(ctypes.c_bool, False)


def cluster_stopping() -> bool:
    return bool(_CLUSTER_STOPPING.value)


def cluster_stop_wait(seconds: float) -> None:
    """Sleep up to `seconds`, waking within a tenth of a second of the cluster beginning to stop
    (the flag has nothing to wait on). A pause (after an outage, or with nothing to do) would
    otherwise hold a stopping cluster up for its whole length."""
    deadline = time.monotonic() + seconds
    while not cluster_stopping() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def cluster_stop_begin() -> None:
    """Called by the cluster's main process on SIGTERM or SIGINT (safe in a signal handler)."""
    _CLUSTER_STOPPING.value = True


def ring(task: str, *calls: Any, group: str, name: str, failed: Callable[[], None] | None = None) -> None:
    """Enqueue `task(call)` for each of `calls` once the current transaction commits (at once
    outside one). A broker that cannot take them is logged and `failed()` runs (to clear a mark,
    say); healing rings again."""
    from django_q.tasks import async_task

    def enqueue() -> None:
        try:
            for call in calls:
                async_task(task, call, group=group, task_name=name)
        except Exception:
            logger.warning("could not enqueue %s; a cluster will ring it again", name)
            if failed:
                failed()

    transaction.on_commit(enqueue)


def lease_until(seconds: float) -> DatabaseNow:
    """A lease's end, on the database's clock (the one clock every machine shares)."""
    return DatabaseNow(seconds)


def lease_expired() -> Q:
    return Q(lease_expires_at__lt=DatabaseNow())


def claim(rows: QuerySet, token: uuid.UUID, lease_seconds: float, **fields: Any) -> int:
    """Take the work these rows describe, if the filter still finds them (the caller's condition is
    the claim's): a fresh token, a lease, the bell answered, and `fields`. The number taken."""
    return rows.update(claim_token=token, lease_expires_at=lease_until(lease_seconds), rung_at=None, **fields)


def held(rows: QuerySet, token: uuid.UUID) -> QuerySet:
    """The rows only while they still carry this claim's token: every write of the holder goes here."""
    return rows.filter(claim_token=token)


def unanswered(quiet_seconds: float, *, field: str = "rung_at") -> Q:
    """Never rung, or rung longer ago than `quiet_seconds` (the task may still wait in the queue)."""
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lt": DatabaseNow(-quiet_seconds)})


def tasks_waiting() -> int:
    """How many tasks wait in the broker's queue for a cluster to take them (not those a cluster has
    taken ahead of its workers); 0 when the broker cannot say (it is down: a ring fails and is
    retried anyway)."""
    try:
        return broker().queue_size() or 0
    except Exception as exc:
        logger.warning("could not read the task queue's length (%s)", exc)
        return 0


@functools.cache
def broker() -> Any:
    """django-q2's broker, made once per process (a Redis one holds a connection pool)."""
    from django_q.brokers import get_broker

    return get_broker()


def bells_heal(
    model: type[Model],
    due: Q,
    *,
    quiet_seconds: float,
    ring_one: Callable[[int], None],
    label: str,
    at_most: int | None = None,
) -> list[str]:
    """Ring every `due` row whose bell went unanswered for `quiet_seconds`; a line for each. The
    bell is marked in the same conditional UPDATE that finds it unanswered, so however many
    clusters heal at once, one rings each row.

    While tasks wait in the queue only rows never rung since their last claim are rung (a retry
    after its backoff, a dead worker's lease run out: no task of theirs exists). A row rung before
    is not rung again then: every worker is busy and its task may be one of those waiting (a drain
    holds a worker for minutes, far longer than a quiet time), so ringing again would only add
    copies behind it at each heal; if its task was lost, it is rung once the queue is empty (jobs'
    drains are rung the same way, jobs.healing)."""
    waiting = due & (Q(rung_at__isnull=True) if tasks_waiting() else unanswered(quiet_seconds))
    ids = model._default_manager.filter(waiting).order_by("pk").values_list("pk", flat=True)
    done = []
    for pk in ids[:at_most] if at_most else ids:
        try:
            with transaction.atomic():
                if model._default_manager.filter(Q(pk=pk) & waiting).update(rung_at=DatabaseNow()):
                    ring_one(pk)
                    done.append(f"{label} {pk}: rang it again")
        except DatabaseError as exc:
            logger.warning("could not heal %s %s (%s)", label, pk, exc)
    return done
