"""Imports started from the screen: the uploaded file is stored, a DataImport row records it, and a
task on the cluster imports it in the background, as `import_data` would.

Claimable work like a job's (eventproject.work: the table is the truth and the queue a doorbell). A
task carries only the import's id and claims the row on a lease; every batch it writes commits with
a checkpoint (last line handled, counts, rejected rows) and renews the lease, fenced by its claim
token. A worker that dies leaves its lease to run out; healing (in every cluster, every few seconds)
rings the import again and the next worker reads past the lines already handled. Behaviours are
unique on their natural key and profiles are upserted, so even a batch written twice would add
nothing.
"""

import logging
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from eventproject.db import DatabaseNow, tables_analyze
from eventproject.leases import LeaseKeeper
from eventproject.work import bells_heal, claim, cluster_stopping, held, lease_expired, lease_until, ring

from .importers import (
    Checkpoints,
    Format,
    ImportFileError,
    ImportOptions,
    ImportPaused,
    ImportSummary,
    Kind,
    detect_format,
    error_line,
    import_file,
)
from .models import Behavior, DataImport, UserProfile
from .webhook_events import IMPORT_COMPLETED, IMPORT_FAILED, import_event_record

logger = logging.getLogger(__name__)
TASK = "extraction.imports.import_run"


class LeaseLost(Exception):
    """The import's lease ran out and another worker took it over: stop without writing."""


def import_create(
    *,
    kind: str,
    upload,
    created_by=None,
    file_format: str | None = None,
    encoding: str = "utf-8-sig",
    tz: str | None = None,
) -> DataImport:
    """Store the uploaded file in IMPORTS_DIR and queue its import. The file is written under a
    temporary name and renamed, so no worker ever reads half of it. Raises ImportFileError when the
    format cannot be told from the name."""
    name = Path(upload.name).name
    file_format = file_format or detect_format(Path(name))
    suffix = ".gz" if name.lower().endswith(".gz") else ""
    folder = Path(settings.IMPORTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    stored = f"{uuid.uuid4().hex}.{file_format}{suffix}"
    partial = folder / f".{stored}.part"
    with partial.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    partial.rename(folder / stored)
    try:
        with transaction.atomic():
            data_import = DataImport.objects.create(
                kind=kind,
                file_name=name[:255],
                stored_name=stored,
                file_size=(folder / stored).stat().st_size,
                file_format=file_format,
                encoding=encoding,
                timezone=tz or settings.TIME_ZONE,
                created_by=created_by,
            )
            import_ring(data_import.id, mark=True)
    except BaseException:
        (folder / stored).unlink(missing_ok=True)
        raise
    return data_import


def import_ring(import_id: int, *, mark: bool = False) -> None:
    """Ring the import's task once the current transaction commits (`mark`: note the ring, on the
    database's clock, so healing does not ring again while the task waits in the queue)."""
    if mark:
        DataImport.objects.filter(id=import_id).update(rung_at=DatabaseNow())
    ring(TASK, import_id, group=f"import-{import_id}", name=f"import {import_id}")


def import_run(import_id: int) -> None:
    """The task: claim the import, import from its checkpoint on, record how it ended.

    Stops after IMPORTS_BUDGET_SECONDS, or at a checkpoint once its cluster stops, with its
    continuation queued; stops at once, writing nothing more, when another worker took the
    import over.
    """
    token = uuid.uuid4()
    data_import = _claim(import_id, token)
    if data_import is None:
        return
    path = Path(settings.IMPORTS_DIR) / data_import.stored_name
    if not path.is_file():
        message = (
            f"the uploaded file is not in IMPORTS_DIR on this worker ({path}); with clusters on several "
            f"machines, IMPORTS_DIR must be shared storage"
        )
        _finish(data_import, token, error=message)
        return
    deadline = time.monotonic() + settings.IMPORTS_BUDGET_SECONDS
    errors_written = len(data_import.errors)
    keeper = _lease_keeper(data_import.id, token)

    def checkpoint(summary: ImportSummary, line: int, position: int) -> bool:
        nonlocal errors_written
        if keeper and keeper.lost.is_set():
            raise LeaseLost
        fields = {
            "line": line,
            "bytes_read": position,
            **{column: getattr(summary, count) for count, column in SUMMARY_COLUMNS.items()},
            "lease_expires_at": lease_until(settings.IMPORTS_LEASE_SECONDS),
            "takeovers": 0,  # it moves again: only deaths in a row, without progress, fail it
        }
        if len(summary.errors) != errors_written:  # the list is rewritten only when it grew
            fields["errors"] = [list(error) for error in summary.errors]
        if not _mine(data_import.id, token).update(**fields):
            raise LeaseLost
        errors_written = len(summary.errors)
        return time.monotonic() < deadline and not cluster_stopping()

    try:
        options = ImportOptions(
            fmt=cast(Format, data_import.file_format),  # the field's choices
            encoding=data_import.encoding,
            tz=ZoneInfo(data_import.timezone),
            batch_size=settings.IMPORTS_BATCH_ROWS,
            max_errors_kept=settings.IMPORTS_MAX_ERRORS_KEPT,
            shown_as=data_import.file_name,
        )
        resume = Checkpoints(checkpoint, summary=_summary_of(data_import), after_line=data_import.line)
        with keeper or nullcontext():
            summary = import_file(cast(Kind, data_import.kind), path, options, checkpoints=resume)
    except ImportPaused:
        _requeue(data_import.id, token)
        return
    except LeaseLost:
        logger.warning("import %s: lease lost; another worker has taken it over", import_id)
        return
    except (ImportFileError, LookupError, OSError, ValueError) as exc:
        _finish(data_import, token, error=str(exc))
        return
    if summary.imported or summary.updated:
        tables_analyze(Behavior, UserProfile)
    _finish(data_import, token)


def _lease_keeper(import_id: int, token: uuid.UUID) -> LeaseKeeper | None:
    """The import's lease, renewed by time (three times a lease) while its worker lives, not only at
    checkpoints: one slow line (megabytes to skip, a slow disk) must not make a healthy worker look
    dead. None inside a caller's transaction (tests), where no other thread could see the row."""
    if connection.in_atomic_block:
        return None

    def renew() -> bool:
        return bool(
            _mine(import_id, token).update(lease_expires_at=lease_until(settings.IMPORTS_LEASE_SECONDS))
        )

    return LeaseKeeper(f"import {import_id}", renew, settings.IMPORTS_LEASE_SECONDS / 3)


def _mine(import_id: int, token: uuid.UUID):
    return held(DataImport.objects.filter(id=import_id, status=DataImport.Status.RUNNING), token)


def _claim(import_id: int, token: uuid.UUID) -> DataImport | None:
    """Take the import: queued, or running on a lease that ran out (its worker died or stalled:
    a takeover, of which IMPORTS_MAX_TAKEOVERS in a row fail the import)."""
    lease = settings.IMPORTS_LEASE_SECONDS
    claims = DataImport.objects.filter(id=import_id)
    # A claim answers the bell: should this worker die, healing rings at once.
    if claim(claims.filter(status=DataImport.Status.QUEUED), token, lease, status=DataImport.Status.RUNNING):
        DataImport.objects.filter(id=import_id, started_at__isnull=True).update(started_at=timezone.now())
        return DataImport.objects.get(id=import_id)
    expired = claims.filter(lease_expired(), status=DataImport.Status.RUNNING)
    with transaction.atomic():
        failed = expired.filter(takeovers__gte=settings.IMPORTS_MAX_TAKEOVERS).update(
            status=DataImport.Status.FAILED,
            claim_token=None,
            lease_expires_at=None,
            finished_at=timezone.now(),
            error=f"its worker stopped {settings.IMPORTS_MAX_TAKEOVERS + 1} times while importing it "
            f"(killed, out of memory?); the lines before the last checkpoint are imported",
        )
        if failed:
            import_event_record(import_id, IMPORT_FAILED)
    if failed:
        _file_remove(DataImport.objects.get(id=import_id))
        return None
    if claim(expired, token, lease, takeovers=F("takeovers") + 1):
        return DataImport.objects.get(id=import_id)
    return None


# Where an import's checkpoint keeps each count of its summary.
SUMMARY_COLUMNS = {
    "read": "rows_read",
    "imported": "imported",
    "updated": "updated",
    "duplicates": "duplicates",
    "rejected": "rejected",
}


def _summary_of(data_import: DataImport) -> ImportSummary:
    counts = {count: getattr(data_import, column) for count, column in SUMMARY_COLUMNS.items()}
    return ImportSummary(**counts, errors=[(line, reason) for line, reason in data_import.errors])


def _requeue(import_id: int, token: uuid.UUID) -> None:
    """The budget is spent: back to the queue with its checkpoint, the continuation rung."""
    with transaction.atomic():
        if _mine(import_id, token).update(
            status=DataImport.Status.QUEUED, claim_token=None, lease_expires_at=None
        ):
            import_ring(import_id, mark=True)


def _finish(data_import: DataImport, token: uuid.UUID, *, error: str = "") -> None:
    status = DataImport.Status.FAILED if error else DataImport.Status.COMPLETED
    fields = {"status": status, "error": error, "claim_token": None, "lease_expires_at": None}
    with transaction.atomic():
        finished = _mine(data_import.id, token).update(**fields, finished_at=timezone.now())
        if finished:
            import_event_record(data_import.id, IMPORT_FAILED if error else IMPORT_COMPLETED)
    if finished:
        _file_remove(data_import)


def _file_remove(data_import: DataImport) -> None:
    """The file goes once its import has ended; the row keeps the report."""
    (Path(settings.IMPORTS_DIR) / data_import.stored_name).unlink(missing_ok=True)


def import_report(data_import: DataImport) -> list[str]:
    """The rejected rows as `import_data` prints them: `file:line: reason`."""
    return [error_line(data_import.file_name, line, reason) for line, reason in data_import.errors]


def import_summary_text(data_import: DataImport) -> str:
    return _summary_of(data_import).text(data_import.kind)


def imports_heal() -> list[str]:
    """Ring every unfinished import nobody is working on: queued ones whose bell went unanswered
    for a lease's time (a lost message, a broker that was down), and running ones whose lease ran
    out (a dead or frozen worker). Run by every cluster with the jobs' healing."""
    due = Q(status=DataImport.Status.QUEUED) | Q(lease_expired(), status=DataImport.Status.RUNNING)
    return bells_heal(
        DataImport, due, quiet_seconds=settings.IMPORTS_LEASE_SECONDS, ring_one=import_ring, label="import"
    )
