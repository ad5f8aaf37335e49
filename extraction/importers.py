"""Streaming import of behaviour logs and user profiles from CSV or JSON Lines.

Files come from spreadsheets and other teams' exports: UTF-8 with or without a
BOM, CRLF line ends, quoted fields, Chinese text, empty cells, and one of the
column layouts in use. Rows are read one at a time and written in batches, so
memory does not grow with the file. A bad row is reported with its line number
and skipped (or, with `strict`, nothing is imported).

Files are also hostile: a line of gigabytes (a gzip bomb), JSON nested a hundred
thousand deep, numbers beyond 64 bits or out of range, invalid UTF-8, NUL
characters, a truncated .gz. None of them stops an import or grows memory: each
is a row error, measured against the IMPORT_* limits in the settings.

The work is split by role: extraction/import_lines.py reads the file's lines and records,
extraction/import_cells.py checks and types each row, and this module batches the rows, writes
them with their checkpoints; import_ahead.py parses the next rows on a thread of its own meanwhile.
"""

import codecs
import contextlib
import gzip
import io
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

from django.db import transaction

from .extractors import BehaviorRecord
from .import_ahead import ahead
from .import_cells import (
    BEHAVIOR_ALIASES,
    PROFILE_USER_ID,
    REQUIRED_BEHAVIOR_FIELDS,
    ImportFileError,
    Limits,
    Plan,
    RowError,
    behavior_plan,
    parse_behavior,
    parse_profile,
)
from .import_lines import Format, detect_format, read_records
from .services import behaviors_insert, profiles_upsert

__all__ = [
    "Checkpoints",
    "ImportFileError",
    "ImportOptions",
    "ImportPaused",
    "ImportSummary",
    "detect_format",
    "error_line",
    "import_file",
]

Kind = Literal["behaviors", "profiles"]
# Rows waiting for their batch may hold this many bytes of values at most: many rows near the
# per-row limits are written sooner than batch_size would.
BATCH_MAX_BYTES = 8_000_000


class ImportPaused(Exception):
    """`on_batch` asked to stop; everything up to the last checkpoint is written and recorded."""


@dataclass
class ImportSummary:
    read: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    committed: bool = True

    def text(self, kind: str) -> str:
        """The closing line of an import, the same in the command, the admin and the API."""
        return (
            f"{kind}: read {self.read}, imported {self.imported}, updated {self.updated}, "
            f"duplicates {self.duplicates}, rejected {self.rejected}"
        )


def error_line(location: str, line: int, reason: str) -> str:
    """A rejected row as reported: `file:line: reason`."""
    return f"{location}:{line}: {reason}"


@dataclass(frozen=True)
class ImportOptions:
    """How a file is read: what a person chooses for an import."""

    fmt: Format | None = None  # None: from the file's name
    encoding: str = "utf-8-sig"
    tz: tzinfo = UTC  # of timestamps without an offset
    strict: bool = False  # one transaction for the whole file, rolled back if any row is bad
    batch_size: int = 5000
    max_errors_kept: int = 1000
    shown_as: str = ""  # the file's name in messages (an upload's own, not where it is stored)


@dataclass
class Checkpoints:
    """A resumable import (the admin's, on the cluster): `save(summary, line, bytes_read)` runs in
    the transaction that writes each batch, so what it records (the last line handled, the counts)
    commits with those rows or not at all; it returns False to stop (ImportPaused is raised once
    that batch is committed). A batch is written every `every_seconds` however few rows it holds,
    so progress shows. To resume, pass the recorded `summary` and `after_line`: records up to that
    line are read past, not counted again."""

    save: Callable[[ImportSummary, int, int], bool]
    summary: ImportSummary = field(default_factory=ImportSummary)
    after_line: int = 0
    every_seconds: float = 1.0


class Importer:
    """Imports one kind of file, streaming: rows are read one at a time, checked, and written in
    batches. A subclass says how a record becomes a row and how a batch is written.

    `on_error(line, reason)` hears every rejected row as it is found; `on_progress(bytes_read)`
    hears about progress through the file.
    """

    kind: ClassVar[Kind]

    def __init__(
        self,
        options: ImportOptions = ImportOptions(),
        *,
        on_error: Callable[[int, str], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        checkpoints: Checkpoints | None = None,
    ):
        self.options, self.on_error, self.on_progress = options, on_error, on_progress
        self.checkpoints = checkpoints
        self.summary = checkpoints.summary if checkpoints else ImportSummary()
        self.pending_bytes = 0  # of the values waiting in the batch, roughly
        self.limits = Limits.from_settings()

    # What a kind says -------------------------------------------------------------------------
    def parse(self, record: dict[str, Any], *, from_csv: bool) -> Any:
        """Check one record and make what `add` takes of it (RowError: it is bad). Runs on the
        parsing thread: it may read the options and limits, and change nothing."""
        raise NotImplementedError

    def add(self, parsed: Any) -> None:
        """Add a parsed record to the batch."""
        raise NotImplementedError

    def write(self) -> None:
        """Write the batch, count what it did, and empty it."""
        raise NotImplementedError

    def batch_full(self) -> bool:
        raise NotImplementedError

    def check_header(self, names: list[str], location: str) -> None:
        """Refuse a CSV file whose header lacks a column the kind needs (ImportFileError)."""
        raise NotImplementedError

    # The run ----------------------------------------------------------------------------------
    def run(self, path: str | Path) -> ImportSummary:
        path = Path(path)
        fmt = self.options.fmt or detect_format(path)
        try:
            raw: BinaryIO = path.open("rb")
        except OSError as exc:
            raise ImportFileError(f"{path}: {exc.strerror}") from exc
        with raw:
            binary = gzip.GzipFile(fileobj=raw) if path.suffix.lower() == ".gz" else raw
            stream = io.TextIOWrapper(
                binary,
                encoding=_without_bom(self.options.encoding),
                errors="surrogateescape",
                newline="" if fmt == "csv" else None,
            )
            self.raw = raw
            location = self.options.shown_as or str(path)
            records = read_records(
                stream, fmt, location=location, on_header=lambda names: self.check_header(names, location)
            )
            with transaction.atomic() if self.options.strict else nullcontext():
                self._records_import(records, from_csv=fmt == "csv")
                if self.options.strict and self.summary.rejected:
                    transaction.set_rollback(True)
                    self.summary.committed = False
                    self.summary.imported = self.summary.updated = self.summary.duplicates = 0
        return self.summary

    def _records_import(self, records, *, from_csv: bool) -> None:
        summary, checkpoints = self.summary, self.checkpoints
        after_line = checkpoints.after_line if checkpoints else 0
        last_line = after_line  # the last line handled, recorded at each checkpoint
        flushed_at = time.monotonic()
        # closing(): the parsing thread stops as this loop ends, however it ends (a pause, an error).
        with contextlib.closing(
            ahead(self._parsed(records, from_csv=from_csv, after_line=after_line))
        ) as rows:
            for line, parsed in rows:
                if (
                    checkpoints
                    and last_line > after_line
                    and time.monotonic() - flushed_at >= checkpoints.every_seconds
                ):
                    self._flush(last_line)
                    flushed_at = time.monotonic()
                last_line = line
                summary.read += 1
                if isinstance(parsed, RowError):
                    self._reject(line, str(parsed))
                    continue
                self.add(parsed)
                if self.batch_full() or self.pending_bytes > BATCH_MAX_BYTES:
                    self._flush(last_line)
                    flushed_at = time.monotonic()
        self._flush(last_line, final=True)

    def _parsed(self, records, *, from_csv: bool, after_line: int) -> Iterator[tuple[int, Any]]:
        """(line, what `parse` made of its record, or the RowError) for the lines after `after_line`
        (those before were handled before the checkpoint this import resumes from). Runs on the
        parsing thread (see ahead()): it touches nothing but the file."""
        for line, record in records:
            if line <= after_line:
                continue
            if not isinstance(record, RowError):
                try:
                    record = self.parse(record, from_csv=from_csv)
                except RowError as exc:
                    record = exc
            yield line, record

    def _reject(self, line: int, reason: str) -> None:
        self.summary.rejected += 1
        if len(self.summary.errors) < self.options.max_errors_kept:
            self.summary.errors.append((line, reason))
        if self.on_error:
            self.on_error(line, reason)

    def _flush(self, last_line: int, *, final: bool = False) -> None:
        if self.checkpoints is None:
            self._write()
            return
        with transaction.atomic():
            self._write()
            go_on = self.checkpoints.save(self.summary, last_line, self.raw.tell())
        if not (go_on or final):
            raise ImportPaused(last_line)

    def _write(self) -> None:
        self.pending_bytes = 0
        if self.options.strict and self.summary.rejected:
            self.clear()  # nothing of a strict import is written once a row was bad
        else:
            self.write()
        if self.on_progress:
            self.on_progress(self.raw.tell())

    def clear(self) -> None:
        raise NotImplementedError


class BehaviorImporter(Importer):
    kind = "behaviors"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch: list[BehaviorRecord] = []
        self.plans: dict[int, Plan] = {}  # of CSV records, by their number of keys

    def check_header(self, names, location):
        present = {BEHAVIOR_ALIASES[name] for name in names if name in BEHAVIOR_ALIASES}
        missing = [name for name in REQUIRED_BEHAVIOR_FIELDS if name not in present]
        if missing:
            raise ImportFileError(
                f"{location}: no column for {', '.join(missing)} (found: {', '.join(names) or 'nothing'})"
            )

    def parse(self, record, *, from_csv):
        plan = None
        if from_csv:  # a CSV record's keys are the header's first names: its length tells which
            plan = self.plans.get(len(record)) or self.plans.setdefault(len(record), behavior_plan(record))
        return parse_behavior(record, self.options.tz, from_csv=from_csv, limits=self.limits, plan=plan)

    def add(self, parsed):
        row, extra_bytes = parsed
        self.batch.append(row)
        self.pending_bytes += 200 + len(row.item) + len(row.place) + extra_bytes

    def batch_full(self) -> bool:
        return len(self.batch) >= self.options.batch_size

    def write(self):
        inserted = behaviors_insert(self.batch)
        self.summary.imported += inserted
        self.summary.duplicates += len(self.batch) - inserted
        self.clear()

    def clear(self):
        self.batch.clear()


class ProfileImporter(Importer):
    kind = "profiles"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch: dict[str, dict[str, Any]] = {}

    def check_header(self, names, location):
        if not any(name in names for name in PROFILE_USER_ID):
            raise ImportFileError(f"{location}: no user_id column (found: {', '.join(names)})")

    def parse(self, record, *, from_csv):
        return parse_profile(record, from_csv=from_csv, limits=self.limits)

    def add(self, parsed):
        user_id, attributes, size = parsed
        if user_id in self.batch:
            # The same user twice in a batch: the later row wins, like a later batch would.
            self.summary.duplicates += 1
        self.batch[user_id] = attributes
        self.pending_bytes += 200 + size

    def batch_full(self) -> bool:
        return len(self.batch) >= self.options.batch_size

    def write(self):
        inserted, updated = profiles_upsert(self.batch)
        self.summary.imported += inserted
        self.summary.updated += updated
        self.summary.duplicates += len(self.batch) - inserted - updated
        self.clear()

    def clear(self):
        self.batch.clear()


IMPORTERS: dict[str, type[Importer]] = {"behaviors": BehaviorImporter, "profiles": ProfileImporter}


def import_file(
    kind: Kind, path: str | Path, options: ImportOptions = ImportOptions(), **hooks
) -> ImportSummary:
    """Import one file of this kind (`hooks`: on_error, on_progress, checkpoints; see Importer)."""
    return IMPORTERS[kind](options, **hooks).run(path)


def _without_bom(encoding: str) -> str:
    """UTF-8 named as such also reads past a byte-order mark (Windows tools write one)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
