"""Use cases of the job engine, the only way in: the API, the admin, the commands and the
django-q2 tasks all start, cancel, resume and retry jobs through these functions.
"""

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from eventproject.db import copy_rows, staging_table, tables_analyze
from extraction.extractors import UnknownExtractor, extractor_class
from extraction.models import UserProfile

from . import transitions
from .bells import job_ring
from .errors import NAMED_AT_MOST, JobConflict, JobInvalid, JobStateError, named
from .models import Job, JobItem, share_errors
from .selectors import users_free_to_start
from .user_ids import user_ids_clean

ANALYZE_AFTER_ITEMS = 50_000
RUN_HERE_WAIT_SECONDS = 0.2  # a job run here looks again this often for chunks other drains hold


def _items_insert(
    cursor, job: Job, source: str, params: Iterable[Any] = (), *, skip_taken: bool = False
) -> int:
    """INSERT `job`'s pending items for the users `source` selects (with `params`); how many.
    skip_taken: users a concurrent start took are left to it (ON CONFLICT DO NOTHING). WHERE 1 = 1:
    SQLite needs it to parse INSERT … SELECT … ON CONFLICT."""
    cursor.execute(
        f"INSERT INTO {JobItem._meta.db_table} (job_id, user_id, status, attempts, error) "
        f"SELECT %s, user_id, %s, 0, '' FROM ({source}) AS chosen WHERE 1 = 1 ORDER BY user_id"
        + (" ON CONFLICT DO NOTHING" if skip_taken else ""),
        [job.id, JobItem.Status.PENDING, *params],
    )
    return cursor.rowcount


def job_start(
    *,
    user_ids: Iterable[Any] | None = None,
    extractor: str = "rules",
    options: dict[str, Any] | None = None,
    created_by=None,
    chunk_size: int | None = None,
    max_attempts: int | None = None,
    priority: int = Job.Priority.NORMAL,
    max_workers: int | None = None,
    parent: Job | None = None,
    enqueue: bool = True,
    everyone: bool = False,
    schedule=None,
) -> Job:
    """Create a job over these users (None: every user needing extraction and not in an active job;
    with `everyone`, every user not in an active job).

    Explicit ids that are unknown or already in an active job are refused by name. Items are
    created in one INSERT … SELECT (a million in seconds); drain tasks are enqueued after commit.
    A job with nobody to process completes at once. `priority` (a Job.Priority weight) and
    `max_workers` say how it shares the workers; `schedule` is the schedule that started it;
    `parent`, the finished job whose failed users this one retries (its users, not `user_ids`).
    """
    errors: dict[str, str] = {}
    default_chunk_size = settings.JOBS_CHUNK_SIZE
    try:
        cls = extractor_class(extractor)
        default_chunk_size = cls.default_chunk_size or default_chunk_size
        options = cls.clean_options(options or {})
    except UnknownExtractor as exc:
        errors["extractor"] = str(exc)
    except ValidationError as exc:
        errors.update({field: " ".join(messages) for field, messages in exc.message_dict.items()})
    chunk_size = default_chunk_size if chunk_size is None else chunk_size
    max_attempts = settings.JOBS_MAX_ATTEMPTS if max_attempts is None else max_attempts
    for name, value, limit in (
        ("chunk_size", chunk_size, settings.JOBS_CHUNK_SIZE_LIMIT),
        ("max_attempts", max_attempts, settings.JOBS_MAX_ATTEMPTS_LIMIT),
    ):
        if not isinstance(value, int) or not 1 <= value <= limit:
            errors[name] = _("must be an integer from 1 to %(limit)s") % {"limit": limit}
    errors.update(share_errors(priority, max_workers))
    ids = None if user_ids is None else user_ids_clean(user_ids, errors)
    if everyone and (user_ids is not None or parent is not None):
        errors["everyone"] = _("every user, or the users named: not both")
    if errors:
        raise JobInvalid(errors)

    if parent is not None:
        selection = {"mode": "retry_failed", "parent": parent.id}
    elif ids is None:
        selection = {"mode": "all" if everyone else "needing_extraction"}
    else:
        selection = {"mode": "users", "count": len(ids)}
    try:
        with transaction.atomic():
            job = Job.objects.create(
                extractor=extractor,
                options=options,
                selection=selection,
                created_by=created_by,
                chunk_size=chunk_size,
                max_attempts=max_attempts,
                priority=priority,
                max_workers=max_workers,
                parent=parent,
                schedule=schedule,
            )
            if parent is not None:
                total = _items_create_for_retry(job, parent)
            elif ids is None:
                total = _items_create_for_needing(job, everyone)
            else:
                total = _items_create_for(job, ids)
            _job_opened(job, total, enqueue=enqueue)
    except IntegrityError:
        # Another start took some of these users between our check and our insert.
        _refuse_busy(parent.retry_items().values("user_id") if parent is not None else ids or [])
        raise
    return job


def _items_create_for_needing(job: Job, everyone: bool = False) -> int:
    chosen = users_free_to_start(everyone=everyone).values("user_id")
    sql, params = chosen.query.sql_with_params()
    with connection.cursor() as cursor:
        try:
            with transaction.atomic():
                return _items_insert(cursor, job, sql, params)
        except IntegrityError:
            # A concurrent start took some of them first; they stay with that job. Only now ON
            # CONFLICT: its speculative insertion into every unique index costs PostgreSQL 2.3×
            # the buffer accesses of a plain INSERT (measured over 2,000,000 items).
            return _items_insert(cursor, job, sql, params, skip_taken=True)


def _items_create_for_retry(job: Job, parent: Job) -> int:
    """Items for the failed users of `parent`, however many (no list of ids goes through here);
    JobConflict when some of them are in another active job. The parent's row is locked first, as
    prune_jobs' mark locks it: a prune that marked it before is seen, one after waits for us."""
    parent = Job.objects.select_for_update().get(id=parent.id)
    _refuse_pruned(parent)
    failed = parent.retry_items().values("user_id")
    _refuse_busy(failed)
    sql, params = failed.query.sql_with_params()
    with connection.cursor() as cursor:
        return _items_insert(cursor, job, sql, params)


def _items_create_for(job: Job, ids: list[str]) -> int:
    with connection.cursor() as cursor:
        staging_table(cursor, "staging_user_ids", JobItem._meta.db_table, ["user_id"])
        copy_rows(cursor, "staging_user_ids", ["user_id"], ((user_id,) for user_id in ids))
        cursor.execute(
            f"SELECT s.user_id FROM staging_user_ids s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {UserProfile._meta.db_table} p WHERE p.user_id = s.user_id)"
        )
        unknown = [user_id for (user_id,) in cursor.fetchall()]
        if unknown:
            raise JobInvalid(
                {"user_ids": _("unknown users: %(users)s") % {"users": named(unknown, len(unknown))}}
            )
        _refuse_busy(ids, cursor=cursor)
        return _items_insert(cursor, job, "SELECT user_id FROM staging_user_ids")


def _refuse_busy(ids: list[str] | QuerySet, cursor=None) -> None:
    """Raise JobConflict naming the users of `ids` (a list, or a query of user ids) already in an
    active job; with `cursor`, the users staged in staging_user_ids instead."""
    if cursor is None:
        busy_items = _active_items(user_id__in=ids)
        total = busy_items.count()
        busy = dict(busy_items.values_list("user_id", "job_id")[:NAMED_AT_MOST])
    else:
        cursor.execute(
            f"SELECT i.user_id, i.job_id FROM {JobItem._meta.db_table} i "
            f"JOIN staging_user_ids s ON s.user_id = i.user_id WHERE i.status IN (%s, %s) "
            f"ORDER BY i.user_id",
            list(JobItem.ACTIVE),
        )
        rows = cursor.fetchall()
        total, busy = len(rows), dict(rows[:NAMED_AT_MOST])
    if total:
        raise JobConflict(busy, total)


def _job_opened(job: Job, total: int, *, enqueue: bool) -> None:
    if total >= ANALYZE_AFTER_ITEMS:
        tables_analyze(JobItem)  # the claim's plan must see these items as pending
    if total:
        Job.objects.filter(id=job.id).update(total_items=total)
        if enqueue:
            job_ring(job.id, tasks=min(settings.JOBS_DRAIN_TASKS, math.ceil(total / job.chunk_size)))
    else:
        transitions.job_complete_empty(job)
    job.refresh_from_db()


UNCHANGED: Any = object()  # an argument not given


def job_share_set(job: Job, *, priority: Any = UNCHANGED, max_workers: Any = UNCHANGED) -> Job:
    """Change a job's share of the workers (its priority, the most workers it may hold), also
    while it runs: the next chunk boundary of every worker sees it; a cancelled or failed one's
    before it resumes. A completed or pruned job's share is history: refused. A working job whose
    cap rises is rung for the drains it may now hold (those the old cap turned away have left)."""
    changes = {
        name: value
        for name, value in (("priority", priority), ("max_workers", max_workers))
        if value is not UNCHANGED
    }
    if errors := share_errors(
        changes.get("priority", job.priority), changes.get("max_workers", job.max_workers)
    ):
        raise JobInvalid(errors)
    open_jobs = Job.objects.exclude(status=Job.Status.COMPLETED).filter(items_pruned_at__isnull=True)
    with transaction.atomic():
        before = (
            open_jobs.select_for_update(no_key=True).filter(id=job.id).only("status", "max_workers").first()
        )
        if changes and before is None:
            job.refresh_from_db()
            raise JobStateError(
                _("job %(id)s is %(status)s; its share of the workers no longer matters")
                % {"id": job.id, "status": job.status}
            )
        if changes:
            Job.objects.filter(id=job.id).update(**changes)
    job.refresh_from_db()
    if before and job.status in Job.WORKING and (more := job.drains_wanted - before.drains_wanted) > 0:
        job_ring(job.id, tasks=more)
    return job


def job_run_here(job: Job, *, on_chunk: Callable[[], None] | None = None) -> Job:
    """Run the job in this process, to its end, instead of on the clusters (`extract --sync`, the
    predecessor's synchronous endpoint): a drain that serves this job alone, with no time budget.
    `on_chunk` is called after each chunk's commit.

    A cluster's heal may ring the job too (it would take it over, were this process to die): this
    returns only once chunks that other drains hold are committed, or taken over here once their
    leases run out."""
    from .worker.drain import job_drain

    while True:
        job_drain(job.id, budget_seconds=float("inf"), on_chunk=on_chunk)
        job.refresh_from_db()
        held_elsewhere = JobItem.objects.filter(job_id=job.id, status=JobItem.Status.RUNNING)
        if not job.is_active or not held_elsewhere.exists():
            return job
        if job.status not in Job.WORKING:  # cancelling: what a dead drain held ends as healing ends it
            transitions.items_stopped_sweep(job.id)
            transitions.job_finish_if_done(job.id)
        time.sleep(RUN_HERE_WAIT_SECONDS)


def job_retry_failed(job: Job, *, created_by=None) -> Job:
    """A new job over the failed users of a finished job, linked to it as its parent."""
    if job.is_active:
        raise JobStateError(
            _("job %(id)s is %(status)s; retry its failed users once it has finished")
            % {"id": job.id, "status": job.status}
        )
    _refuse_pruned(job)
    if not job.retry_items().exists():
        raise JobStateError(
            _("job %(id)s has no failed users to retry (none, or its retries extracted them)")
            % {"id": job.id}
        )
    return job_start(
        extractor=job.extractor,
        options=job.options,
        created_by=created_by,
        chunk_size=job.chunk_size,
        max_attempts=job.max_attempts,
        parent=job,
    )


def job_cancel(job: Job) -> Job:
    """Cancel: pending items at once; running chunks finish and keep their work; then cancelled."""
    if not transitions.job_cancel_request(job.id):
        job.refresh_from_db()
        raise JobStateError(
            _("job %(id)s is %(status)s; only queued or running jobs can be cancelled")
            % {"id": job.id, "status": job.status}
        )
    transitions.job_finish_if_done(job.id)
    job.refresh_from_db()
    return job


def job_resume(job: Job, *, max_total_tokens: int | None = None) -> Job:
    """Queued or running: ring the bell again. Cancelled or failed: put the cancelled items back
    to work (those whose users are not in another active job meanwhile) and run the job again.

    A job stopped by its token cap (options.max_total_tokens) would stop again at once: it resumes
    only with a higher cap, `max_total_tokens`, which replaces the old one.
    """
    if job.status in Job.WORKING:
        if max_total_tokens is not None:  # its drains made their extractors with the cap they read
            raise JobStateError(
                _(
                    "job %(id)s is %(status)s; a new token cap is given when a stopped job resumes "
                    "(cancel it first)"
                )
                % {"id": job.id, "status": job.status}
            )
        job_ring(job.id, tasks=settings.JOBS_DRAIN_TASKS)
        return job
    if job.status not in Job.STOPPED:
        raise JobStateError(
            _("job %(id)s is %(status)s; only cancelled, failed or unfinished jobs resume")
            % {"id": job.id, "status": job.status}
        )
    _refuse_pruned(job)
    options = _options_with_token_cap(job, max_total_tokens)
    try:
        resumed = transitions.job_reopen(job, options=options)
    except IntegrityError:
        # Another start or resume took some of these users between our check and our update.
        _refuse_busy(transitions.items_resumable(job).values("user_id"))
        raise
    if not resumed:
        job.refresh_from_db()
        if job.status not in Job.STOPPED or job.items_pruned_at:
            raise JobStateError(_("job %(id)s changed while resuming; try again") % {"id": job.id})
        raise JobStateError(_("job %(id)s has no cancelled users left to resume") % {"id": job.id})
    job_ring(job.id, tasks=min(settings.JOBS_DRAIN_TASKS, math.ceil(resumed / job.chunk_size)))
    job.refresh_from_db()
    return job


def _active_items(**filters):
    return JobItem.objects.filter(status__in=JobItem.ACTIVE, **filters)


def _options_with_token_cap(job: Job, max_total_tokens: int | None) -> dict[str, Any]:
    """The job's options for a resume: with the new token cap, which must lie above what was spent
    when the old cap was what stopped the job."""
    options = dict(job.options)
    spent = job.prompt_tokens + job.completion_tokens
    cap = options.get("max_total_tokens") or 0
    if max_total_tokens is None:
        if cap and spent >= cap:
            raise JobStateError(
                _(
                    "job %(id)s stopped at its token cap: %(spent)s of %(cap)s tokens spent "
                    "(options.max_total_tokens); resume it with a higher max_total_tokens"
                )
                % {"id": job.id, "spent": f"{spent:,}", "cap": f"{cap:,}"}
            )
        return options
    try:
        extractor = extractor_class(job.extractor)
    except UnknownExtractor as exc:
        raise JobInvalid({"max_total_tokens": str(exc)}) from None
    if "max_total_tokens" not in extractor.options_spec:
        raise JobInvalid(
            {"max_total_tokens": _("extractor %(name)r has no token cap") % {"name": job.extractor}}
        )
    if (
        isinstance(max_total_tokens, bool)
        or not isinstance(max_total_tokens, int)
        or max_total_tokens <= spent
    ):
        raise JobInvalid(
            {
                "max_total_tokens": _("must be a whole number above the %(spent)s tokens the job has spent")
                % {"spent": f"{spent:,}"}
            }
        )
    options["max_total_tokens"] = max_total_tokens
    try:
        return extractor.clean_options(options)
    except ValidationError as exc:
        raise JobInvalid({name: " ".join(messages) for name, messages in exc.message_dict.items()}) from None


def _refuse_pruned(job: Job) -> None:
    if job.items_pruned_at:
        raise JobStateError(
            _("job %(id)s's items were pruned on %(date)s; only its counts remain")
            % {"id": job.id, "date": f"{timezone.localtime(job.items_pruned_at):%Y-%m-%d}"}
        )


def job_counters_reconcile(job_id: int) -> dict[str, tuple[int, int]]:
    """Recount the job's counters from its items; fix and return those that differed (was, now).
    A pruned job's counters are all that is left of its items: they are kept as they are."""
    with transaction.atomic():
        # Locked before counting: a commit moves items and counters under this lock, so none can
        # land between the count and the write (and be undone by it).
        job = Job.objects.select_for_update().get(id=job_id)
        _refuse_pruned(job)
        counts = dict(JobItem.objects.filter(job_id=job_id).values_list("status").annotate(n=Count("id")))
        events = JobItem.objects.filter(job_id=job_id, status=JobItem.Status.SUCCEEDED).aggregate(
            n=Coalesce(Sum("event_count"), 0)
        )["n"]
        truth = {
            "total_items": sum(counts.values()),
            "succeeded_items": counts.get(JobItem.Status.SUCCEEDED, 0),
            "failed_items": counts.get(JobItem.Status.FAILED, 0),
            "cancelled_items": counts.get(JobItem.Status.CANCELLED, 0),
            "event_count": events,
        }
        changed = {
            name: (getattr(job, name), value) for name, value in truth.items() if getattr(job, name) != value
        }
        if changed:
            Job.objects.filter(id=job_id).update(**truth)
    return changed
