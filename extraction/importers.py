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
import queue
import re
import threading
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
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # any of the three: one search for the common case
BEHAVIOR_TEXT_LIMITS = {"item": 255, "app": 128, "media": 128, "place": 255}
INT64 = range(-(2**63), 2**63)
# Rows waiting for their batch may hold this many bytes of values at most: many rows near the
# per-row limits are written sooner than batch_size would.
BATCH_MAX_BYTES = 8_000_000


@dataclass(frozen=True)
class Limits:
    """The IMPORT_* limits a row is checked against, read from the settings once per import (not
    once per cell: a settings lookup costs about as much as checking a cell)."""

    user_id_chars: int
    earliest_year: int
    latest_year: int
    max_duration: int
    extra_bytes: int
    attributes_bytes: int

    @classmethod
    def from_settings(cls) -> "Limits":
        return cls(
            user_id_chars=settings.USER_ID_MAX_CHARS,
            earliest_year=settings.IMPORT_EARLIEST_YEAR,
            latest_year=settings.IMPORT_LATEST_YEAR,
            max_duration=settings.IMPORT_MAX_DURATION_SECONDS,
            extra_bytes=settings.IMPORT_MAX_EXTRA_BYTES,
            attributes_bytes=settings.IMPORT_MAX_ATTRIBUTES_BYTES,
        )


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
        if len(line) > self.limit and len(line.rstrip("\r\n")) > self.limit:
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
        lines.record_chars = 0  # a record starts (record_started(), inlined: once a line)
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
        text = "".join(row)  # one string: cells of a CSV row nest nothing
        if UNSTORABLE.search(text):
            try:
                _check_text(text)
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


def parse_timestamp(value: Any, tz: tzinfo, limits: Limits | None = None) -> datetime:
    """ISO 8601 (with '-' or '/'), or Unix seconds / milliseconds; naive times are in `tz`.

    Years outside IMPORT_EARLIEST_YEAR…IMPORT_LATEST_YEAR are refused: no behaviour happened
    then, and year 1 or 9999 overflows when converted to UTC.
    """
    limits = limits or Limits.from_settings()
    if type(value) is str:  # nearly always: CSV cells, and JSON's usual timestamps
        text = value.strip()
        if not text:
            raise RowError("missing timestamp")
        if DECIMAL.fullmatch(text) and len(text.lstrip("+-").split(".")[0]) >= 9:
            moment = _from_epoch(float(text))
        else:
            try:
                moment = datetime.fromisoformat(text.replace("/", "-"))
            except ValueError:
                moment = _loose_datetime(text, tz)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
    elif isinstance(value, bool | dict | list):
        raise RowError(f"unparseable timestamp {_shown(value)}")
    elif isinstance(value, int | float):
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
    if not limits.earliest_year <= moment.year <= limits.latest_year:
        raise RowError(
            f"timestamp {_shown(value)} is outside the years {limits.earliest_year}–"
            f"{limits.latest_year} (IMPORT_EARLIEST_YEAR, IMPORT_LATEST_YEAR)"
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


def parse_duration(value: Any, limits: Limits | None = None) -> float | None:
    limits = limits or Limits.from_settings()
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError(f"non-numeric duration {_shown(value)}")
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"non-numeric duration {_shown(value)}") from None
    if not 0 <= seconds <= limits.max_duration:
        raise RowError(
            f"duration must be from 0 to {limits.max_duration:,} seconds "
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
    if type(value) is str:
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise RowError(f"{name} must be text or a number, not a JSON {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _stored_size(value: dict[str, Any], what: str, limit_name: str, limit: int) -> int:
    """The bytes `value` takes as stored JSON; RowError past `limit` (the setting `limit_name`)."""
    size = len(orjson.dumps(value)) if value else 2
    if size > limit:
        raise RowError(f"{what} take {size:,} bytes as JSON, over {limit:,} ({limit_name})")
    return size


Plan = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


def behavior_plan(record: dict[str, Any]) -> Plan:
    """Which of a record's keys fill which fields ((field, key) pairs), and which go to `extra`:
    the first column a layout names for a field fills it, the others are kept as they are."""
    targets: dict[str, str] = {}
    others = []
    for key in record:
        target = BEHAVIOR_ALIASES.get(key)
        if target is None or target in targets:
            others.append(key)
        else:
            targets[target] = key
    return tuple(targets.items()), tuple(others)


def parse_behavior(
    record: dict[str, Any],
    tz: tzinfo,
    *,
    from_csv: bool,
    limits: Limits | None = None,
    plan: Plan | None = None,
) -> tuple[BehaviorRow, int]:
    """The behaviour a record holds, and the bytes its other columns take as JSON (RowError: why
    it is bad). Columns the layouts name fill the fields (a second column for one field, like the
    rest, goes to `extra`); cells read from CSV are typed (numbers, comma lists). `plan`: the
    record's behavior_plan(), when the caller knows it (every row of a CSV file has the same)."""
    limits = limits or Limits.from_settings()
    targets, others = plan or behavior_plan(record)
    fields = {target: record[key] for target, key in targets}
    extra: dict[str, Any] = {}
    for key in others:
        value = record[key]
        if value is not None and value != "":
            extra[key] = typed_cell(value) if from_csv and type(value) is str else value
    get = fields.get
    user_id = _text(get("user_id"), "user_id")
    if not user_id:
        raise RowError("missing user_id")
    action = _text(get("action"), "action")
    if not action:
        raise RowError("missing action")
    if len(user_id) > limits.user_id_chars or len(action) > 64:
        raise RowError(f"user_id longer than {limits.user_id_chars} or action longer than 64 characters")
    item, app = _text(get("item"), "item"), _text(get("app"), "app")
    media, place = _text(get("media"), "media"), _text(get("place"), "place")
    if len(item) > 255 or len(app) > 128 or len(media) > 128 or len(place) > 255:
        for name, text in (("item", item), ("app", app), ("media", media), ("place", place)):
            if len(text) > BEHAVIOR_TEXT_LIMITS[name]:
                raise RowError(f"{name} longer than {BEHAVIOR_TEXT_LIMITS[name]} characters ({len(text):,})")
    size = _stored_size(extra, "the other columns", "IMPORT_MAX_EXTRA_BYTES", limits.extra_bytes)
    duration = get("duration_seconds")
    row = BehaviorRow(
        user_id,
        action,
        parse_timestamp(get("occurred_at"), tz, limits),
        item,
        app,
        media,
        place,
        None if duration is None or duration == "" else parse_duration(duration, limits),
        extra,
    )
    return row, size


def parse_profile(
    record: dict[str, Any], *, from_csv: bool, limits: Limits | None = None
) -> tuple[str, dict[str, Any], int]:
    """A profile's user id, its attributes, and the bytes they take as JSON (RowError: why the
    record is bad)."""
    limits = limits or Limits.from_settings()
    key = next((name for name in PROFILE_USER_ID if name in record), None)
    user_id = _text(record.get(key), "user_id") if key else ""
    if not user_id:
        raise RowError("missing user_id")
    if len(user_id) > limits.user_id_chars:
        raise RowError(f"user_id longer than {limits.user_id_chars} characters")
    attributes = {
        name: typed_cell(value) if from_csv and isinstance(value, str) else value
        for name, value in record.items()
        if name != key
    }
    size = _stored_size(attributes, "the attributes", "IMPORT_MAX_ATTRIBUTES_BYTES", limits.attributes_bytes)
    return user_id, attributes, size


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
        for line, parsed in ahead(self._parsed(records, from_csv=from_csv, after_line=after_line)):
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
        checked_header = not from_csv
        for line, record in records:
            if line <= after_line:
                continue
            if not isinstance(record, RowError):
                if not checked_header:
                    self.check_header(record, str(self.raw.name))
                    checked_header = True
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch: list[BehaviorRow] = []
        self.plans: dict[int, Plan] = {}  # of CSV records, by their number of keys

    def check_header(self, first, location):
        present = {BEHAVIOR_ALIASES[name] for name in first if name in BEHAVIOR_ALIASES}
        missing = [name for name in REQUIRED_BEHAVIOR_FIELDS if name not in present]
        if missing:
            raise ImportFileError(
                f"{location}: no column for {', '.join(missing)} (found: {', '.join(first) or 'nothing'})"
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch: dict[str, dict[str, Any]] = {}

    def check_header(self, first, location):
        if not any(name in first for name in PROFILE_USER_ID):
            raise ImportFileError(f"{location}: no user_id column (found: {', '.join(first)})")

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


AHEAD_CHUNK = 500  # parsed lines handed over at a time
AHEAD_CHUNKS = 8  # at most this many chunks wait: memory stays bounded


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def ahead(items: Iterator) -> Iterator:
    """The items of `items`, made on a thread of their own while the caller uses the ones before.

    Parsing a line is Python and holds the interpreter's lock; writing a batch is mostly waiting
    for the database, which releases it: so the next batch is parsed while the last one is
    written, and an import takes about the longer of the two instead of their sum. An exception
    on the thread is raised here, after the items made before it. When the caller stops early
    (an error, a pause), the thread stops at its next chunk."""
    handed: queue.Queue = queue.Queue(maxsize=AHEAD_CHUNKS)
    stop = threading.Event()
    done = object()

    def hand(chunk) -> bool:
        while not stop.is_set():
            try:
                handed.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        chunk: list = []
        try:
            for item in items:
                chunk.append(item)
                if len(chunk) >= AHEAD_CHUNK:
                    if not hand(chunk):
                        return
                    chunk = []
        except BaseException as exc:  # raised again in the caller's thread
            if hand(chunk):
                hand(_Failed(exc))
            return
        if hand(chunk):
            hand(done)

    thread = threading.Thread(target=make, name="import-parse", daemon=True)
    thread.start()
    try:
        while (chunk := handed.get()) is not done:
            if isinstance(chunk, _Failed):
                raise chunk.error
            yield from chunk
    finally:
        stop.set()
        thread.join()


IMPORTERS: dict[str, type[Importer]] = {"behaviors": BehaviorImporter, "profiles": ProfileImporter}


def import_file(
    kind: Kind, path: str | Path, options: ImportOptions = ImportOptions(), **hooks
) -> ImportSummary:
    """Import one file of this kind (`hooks`: on_error, on_progress, checkpoints; see Importer)."""
    return IMPORTERS[kind](options, **hooks).run(path)
