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
"""

import csv
import gzip
import io
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import orjson
from django.conf import settings
from django.db import transaction

from .services import BehaviorRow, behaviors_insert, profiles_upsert

Kind = Literal["behaviors", "profiles"]
Format = Literal["csv", "jsonl"]

# Source column name -> behaviour field, for both layouts in use (and obvious variants).
BEHAVIOR_ALIASES = {
    "user_id": "user_id",
    "uid": "user_id",
    "userid": "user_id",
    "user": "user_id",
    "action": "action",
    "behavior": "action",
    "behaviour": "action",
    "event": "action",
    "timestamp": "occurred_at",
    "event_time": "occurred_at",
    "time": "occurred_at",
    "occurred_at": "occurred_at",
    "datetime": "occurred_at",
    "item_id": "item",
    "item": "item",
    "app_id": "app",
    "app": "app",
    "media_id": "media",
    "media": "media",
    "poi_id": "place",
    "poi": "place",
    "place": "place",
    "duration": "duration_seconds",
    "duration_seconds": "duration_seconds",
}
PROFILE_USER_ID = ("user_id", "uid", "userid", "user")
REQUIRED_BEHAVIOR_FIELDS = ("user_id", "action", "occurred_at")
LIST_SEPARATORS = re.compile(r"[,，]")
INTEGER = re.compile(r"[+-]?\d+")
DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
LOOSE_DATETIME = re.compile(
    r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d+)?)?)?"
)
# Bytes that were not valid in the file's encoding (decoded with surrogateescape), and unpaired
# surrogates from JSON escapes: neither can be stored as UTF-8.
UNDECODABLE = re.compile("[\udc80-\udcff]")
SURROGATE = re.compile("[\ud800-\udfff]")
BEHAVIOR_TEXT_LIMITS = {"item": 255, "app": 128, "media": 128, "place": 255}
INT64 = range(-(2**63), 2**63)
# Rows waiting for their batch may hold this many bytes of values at most: many rows near the
# per-row limits are written sooner than batch_size would.
BATCH_MAX_BYTES = 8_000_000


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, missing columns)."""


class ImportPaused(Exception):
    """`on_batch` asked to stop; everything up to the last checkpoint is written and recorded."""


class RowError(ValueError):
    """One row is bad; the message says why."""


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


def detect_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ImportFileError(f"{path}: cannot tell the format from the name; pass --format csv or jsonl")


class LineTooLong(Exception):
    """A physical line longer than IMPORT_MAX_LINE_CHARS; it was skipped to its end."""


class FileCutShort(Exception):
    """The compressed stream is truncated or damaged: nothing after this point can be read."""


class BoundedLines:
    """The lines of a text stream, none longer than `limit` characters in memory.

    A longer line (a gzip bomb decompresses to one) is read on in pieces and dropped, and
    LineTooLong is raised in its place; iteration goes on with the next line (this is an object,
    not a generator, so that csv.reader can keep pulling after an exception). A record spanning
    lines (a quoted CSV field with line breaks, or one that never closes) is held to the same
    limit: the reader calls `record_started()` at each record. `number` is the count of physical
    lines consumed.
    """

    def __init__(self, stream: io.TextIOBase, limit: int):
        self.stream, self.limit, self.number, self.record_chars = stream, limit, 0, 0

    def __iter__(self) -> "BoundedLines":
        return self

    def record_started(self) -> None:
        self.record_chars = 0

    def __next__(self) -> str:
        line = self._read()
        if not line:
            raise StopIteration
        self.number += 1
        if len(line.rstrip("\r\n")) > self.limit:
            while line and not line.endswith("\n"):  # skip the rest of this line
                line = self._read()
            raise LineTooLong(f"line longer than {self.limit:,} characters (IMPORT_MAX_LINE_CHARS)")
        self.record_chars += len(line)
        if self.record_chars > self.limit:
            self.record_chars = 0
            raise LineTooLong(
                f"a record longer than {self.limit:,} characters (IMPORT_MAX_LINE_CHARS) from this line on; "
                f"a quote that never closes?"
            )
        return line

    def _read(self) -> str:
        try:
            return self.stream.readline(self.limit + 2)  # room for the line break
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise FileCutShort(
                f"the compressed file is truncated or damaged ({exc}); nothing after this line could be read"
            ) from None


def read_records(
    stream: io.TextIOBase, fmt: Format, *, location: str = ""
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield (line number, record or RowError). Header names are stripped and lower-cased.

    The stream must decode with errors="surrogateescape": a line with bytes invalid in the
    encoding is then one row error, not the end of the import.
    """
    lines = BoundedLines(stream, settings.IMPORT_MAX_LINE_CHARS)
    if fmt == "csv":
        yield from _read_csv(lines, location)
    else:
        yield from _read_jsonl(lines)


def _read_csv(lines: BoundedLines, location: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.reader(lines)
    names: list[str] | None = None
    start = 1
    while True:
        lines.record_started()
        try:
            row = next(reader)
        except StopIteration:
            return
        except (LineTooLong, csv.Error) as exc:
            yield start, RowError(str(exc))  # the record that began there is dropped
            start = lines.number + 1
            continue
        except FileCutShort as exc:
            yield lines.number + 1, RowError(str(exc))
            return
        line, start = start, lines.number + 1
        if names is None:  # the header
            if UNDECODABLE.search("".join(row)):
                raise ImportFileError(
                    f"{location}: the header is not valid UTF-8; save the file as UTF-8 or pass --encoding"
                )
            names = [name.strip().lower() for name in row]
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) > len(names):
            yield line, RowError(f"{len(row)} fields but the header has {len(names)}")
            continue
        try:
            _check_text("".join(row))  # one string: cells of a CSV row nest nothing
        except RowError as exc:
            yield line, exc
            continue
        yield line, dict(zip(names, row, strict=False))  # short rows: trailing cells empty


def _read_jsonl(lines: BoundedLines) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    while True:
        lines.record_started()
        try:
            text = next(lines)
        except StopIteration:
            return
        except LineTooLong as exc:
            yield lines.number, RowError(str(exc))
            continue
        except FileCutShort as exc:
            yield lines.number + 1, RowError(str(exc))
            return
        if not text.strip():
            continue
        try:
            record = _json_record(text)
        except RowError as exc:
            yield lines.number, exc
            continue
        yield lines.number, {str(key).strip().lower(): value for key, value in record.items()}


def _json_record(text: str) -> dict[str, Any]:
    """One JSON Lines object, refused when it would not survive storage: invalid text, numbers
    beyond 64 bits or out of range, NaN and Infinity, nesting deeper than IMPORT_MAX_JSON_DEPTH."""
    if UNDECODABLE.search(text):
        raise RowError(_undecodable())
    try:
        record = json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except RowError:
        raise
    except RecursionError:
        raise RowError(f"JSON nested deeper than {settings.IMPORT_MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise RowError(f"invalid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(record, dict):
        raise RowError("a line must hold a JSON object")
    _check_text(record)
    return record


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or int(text) not in INT64:
        raise RowError(f"the number {_shown(text)} does not fit in 64 bits")
    return int(text)


def _json_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise RowError(f"the number {_shown(text)} is out of range")
    return number


def _json_constant(name: str) -> float:
    raise RowError(f"{name} is not a number JSON allows")


def _check_text(value: Any, depth: int = 0) -> None:
    """Refuse what PostgreSQL (and any UTF-8 reader) cannot store, and nesting past the limit."""
    if isinstance(value, str):
        if "\x00" in value:
            raise RowError("a NUL character (\\0) in the text")
        if UNDECODABLE.search(value):
            raise RowError(_undecodable())
        if SURROGATE.search(value):
            raise RowError("an unpaired surrogate (\\ud800–\\udfff) in the text")
        return
    if depth >= settings.IMPORT_MAX_JSON_DEPTH and isinstance(value, dict | list):
        raise RowError(f"JSON nested deeper than {settings.IMPORT_MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, depth + 1)
            _check_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, depth + 1)


def _undecodable() -> str:
    return "bytes that are not valid text in the file's encoding (save it as UTF-8, or pass --encoding)"


def _shown(value: Any, limit: int = 40) -> str:
    """A value quoted in an error message, cut short: a hostile cell may be megabytes."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_timestamp(value: Any, tz: tzinfo) -> datetime:
    """ISO 8601 (with '-' or '/'), or Unix seconds / milliseconds; naive times are in `tz`.

    Years outside IMPORT_EARLIEST_YEAR…IMPORT_LATEST_YEAR are refused: no behaviour happened
    then, and year 1 or 9999 overflows when converted to UTC.
    """
    if isinstance(value, bool | dict | list):
        raise RowError(f"unparseable timestamp {_shown(value)}")
    if isinstance(value, int | float):
        moment = _from_epoch(value)
    else:
        text = str(value).strip() if value is not None else ""
        if not text:
            raise RowError("missing timestamp")
        if DECIMAL.fullmatch(text) and len(text.lstrip("+-").split(".")[0]) >= 9:
            moment = _from_epoch(float(text))
        else:
            try:
                moment = datetime.fromisoformat(text.replace("/", "-"))
            except ValueError:
                moment = _loose_datetime(text, tz)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=tz)
    if not settings.IMPORT_EARLIEST_YEAR <= moment.year <= settings.IMPORT_LATEST_YEAR:
        raise RowError(
            f"timestamp {_shown(value)} is outside the years {settings.IMPORT_EARLIEST_YEAR}–"
            f"{settings.IMPORT_LATEST_YEAR} (IMPORT_EARLIEST_YEAR, IMPORT_LATEST_YEAR)"
        )
    return moment


def _loose_datetime(text: str, tz: tzinfo) -> datetime:
    """Spreadsheet-style times without zero padding, such as 2024/5/1 9:05."""
    match = LOOSE_DATETIME.fullmatch(text)
    if not match:
        raise RowError(f"unparseable timestamp {_shown(text)}")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(float(fraction or 0) * 1_000_000),
            tzinfo=tz,
        )
    except ValueError:
        raise RowError(f"unparseable timestamp {_shown(text)}") from None


def _from_epoch(number: float) -> datetime:
    try:
        if number > 1e11:  # milliseconds: 1e11 seconds is the year 5138
            number /= 1000
        return datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise RowError(f"timestamp {_shown(number)} is out of range") from None


def parse_duration(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError(f"non-numeric duration {_shown(value)}")
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"non-numeric duration {_shown(value)}") from None
    if not 0 <= seconds <= settings.IMPORT_MAX_DURATION_SECONDS:
        raise RowError(
            f"duration must be from 0 to {settings.IMPORT_MAX_DURATION_SECONDS:,} seconds "
            f"(IMPORT_MAX_DURATION_SECONDS), got {_shown(value)}"
        )
    return seconds


def typed_cell(text: str) -> Any:
    """A spreadsheet cell as a JSON value: numbers as numbers, comma lists as lists."""
    text = text.strip()
    if not text:
        return None
    if INTEGER.fullmatch(text):
        digits = text.lstrip("+-")
        # A leading zero marks an identifier (phone, zip code), not a number; so do more digits
        # than 64 bits hold (an IMEI, a card number).
        if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 18:
            return text
        return int(text)
    if DECIMAL.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text
    if LIST_SEPARATORS.search(text):
        return [typed_cell(part) for part in LIST_SEPARATORS.split(text) if part.strip()]
    return text


def _text(value: Any, name: str = "value") -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise RowError(f"{name} must be text or a number, not a JSON {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _stored_size(value: dict[str, Any], what: str, limit_name: str) -> int:
    """The bytes `value` takes as stored JSON; RowError past the limit named `limit_name`."""
    size = len(orjson.dumps(value))
    limit = getattr(settings, limit_name)
    if size > limit:
        raise RowError(f"{what} take {size:,} bytes as JSON, over {limit:,} ({limit_name})")
    return size


def parse_behavior(record: dict[str, Any], tz: tzinfo, *, from_csv: bool) -> BehaviorRow:
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        target = BEHAVIOR_ALIASES.get(key)
        if target is None or target in fields:
            if value is not None and value != "":
                extra[key] = typed_cell(value) if from_csv and isinstance(value, str) else value
        else:
            fields[target] = value
    user_id = _text(fields.get("user_id"), "user_id")
    if not user_id:
        raise RowError("missing user_id")
    action = _text(fields.get("action"), "action")
    if not action:
        raise RowError("missing action")
    if len(user_id) > settings.USER_ID_MAX_CHARS or len(action) > 64:
        raise RowError(
            f"user_id longer than {settings.USER_ID_MAX_CHARS} or action longer than 64 characters"
        )
    texts = {name: _text(fields.get(name), name) for name in BEHAVIOR_TEXT_LIMITS}
    for name, limit in BEHAVIOR_TEXT_LIMITS.items():
        if len(texts[name]) > limit:
            raise RowError(f"{name} longer than {limit} characters ({len(texts[name]):,})")
    _stored_size(extra, "the other columns", "IMPORT_MAX_EXTRA_BYTES")
    return BehaviorRow(
        user_id=user_id,
        action=action,
        occurred_at=parse_timestamp(fields.get("occurred_at"), tz),
        duration_seconds=parse_duration(fields.get("duration_seconds")),
        extra=extra,
        **texts,
    )


def parse_profile(record: dict[str, Any], *, from_csv: bool) -> tuple[str, dict[str, Any]]:
    key = next((name for name in PROFILE_USER_ID if name in record), None)
    user_id = _text(record.get(key), "user_id") if key else ""
    if not user_id:
        raise RowError("missing user_id")
    if len(user_id) > settings.USER_ID_MAX_CHARS:
        raise RowError(f"user_id longer than {settings.USER_ID_MAX_CHARS} characters")
    attributes = {
        name: typed_cell(value) if from_csv and isinstance(value, str) else value
        for name, value in record.items()
        if name != key
    }
    _stored_size(attributes, "the attributes", "IMPORT_MAX_ATTRIBUTES_BYTES")
    return user_id, attributes


@dataclass(frozen=True)
class ImportOptions:
    """How a file is read: what a person chooses for an import."""

    fmt: Format | None = None  # None: from the file's name
    encoding: str = "utf-8-sig"
    tz: tzinfo = UTC  # of timestamps without an offset
    strict: bool = False  # one transaction for the whole file, rolled back if any row is bad
    batch_size: int = 5000
    max_errors_kept: int = 1000


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

    # What a kind says -------------------------------------------------------------------------
    def add(self, record: dict[str, Any], *, from_csv: bool) -> None:
        """Check one record and add it to the batch (RowError: it is bad)."""
        raise NotImplementedError

    def write(self) -> None:
        """Write the batch, count what it did, and empty it."""
        raise NotImplementedError

    def batch_full(self) -> bool:
        raise NotImplementedError

    def check_header(self, first: dict[str, Any], location: str) -> None:
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
                encoding=self.options.encoding,
                errors="surrogateescape",
                newline="" if fmt == "csv" else None,
            )
            self.raw = raw
            records = read_records(stream, fmt, location=str(path))
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
        checked_header = not from_csv
        for line, record in records:
            if line <= after_line:  # handled before the checkpoint this import resumes from
                continue
            if (
                checkpoints
                and last_line > after_line
                and time.monotonic() - flushed_at >= checkpoints.every_seconds
            ):
                self._flush(last_line)
                flushed_at = time.monotonic()
            last_line = line
            summary.read += 1
            if isinstance(record, RowError):
                self._reject(line, str(record))
                continue
            if not checked_header:
                self.check_header(record, str(self.raw.name))
                checked_header = True
            try:
                self.add(record, from_csv=from_csv)
            except RowError as exc:
                self._reject(line, str(exc))
                continue
            if self.batch_full() or self.pending_bytes > BATCH_MAX_BYTES:
                self._flush(last_line)
                flushed_at = time.monotonic()
        self._flush(last_line, final=True)

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
        self.batch: list[BehaviorRow] = []

    def check_header(self, first, location):
        present = {BEHAVIOR_ALIASES[name] for name in first if name in BEHAVIOR_ALIASES}
        missing = [name for name in REQUIRED_BEHAVIOR_FIELDS if name not in present]
        if missing:
            raise ImportFileError(
                f"{location}: no column for {', '.join(missing)} (found: {', '.join(first) or 'nothing'})"
            )

    def add(self, record, *, from_csv):
        row = parse_behavior(record, self.options.tz, from_csv=from_csv)
        self.batch.append(row)
        self.pending_bytes += 200 + len(row.item) + len(row.place) + len(orjson.dumps(row.extra))

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

    def check_header(self, first, location):
        if not any(name in first for name in PROFILE_USER_ID):
            raise ImportFileError(f"{location}: no user_id column (found: {', '.join(first)})")

    def add(self, record, *, from_csv):
        user_id, attributes = parse_profile(record, from_csv=from_csv)
        if user_id in self.batch:
            # The same user twice in a batch: the later row wins, like a later batch would.
            self.summary.duplicates += 1
        self.batch[user_id] = attributes
        self.pending_bytes += 200 + len(orjson.dumps(attributes))

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
