"""Streaming import of behaviour logs and user profiles from CSV or JSON Lines.

Files come from spreadsheets and other teams' exports: UTF-8 with or without a
BOM, CRLF line ends, quoted fields, Chinese text, empty cells, and one of the
column layouts in use. Rows are read one at a time and written in batches, so
memory does not grow with the file. A bad row is reported with its line number
and skipped (or, with `strict`, nothing is imported).
"""

import csv
import gzip
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO, Literal

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


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, missing columns)."""


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


def detect_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ImportFileError(f"{path}: cannot tell the format from the name; pass --format csv or jsonl")


def read_records(
    stream: io.TextIOBase, fmt: Format, *, location: str = ""
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield (line number, record or RowError). Header names are stripped and lower-cased."""
    try:
        if fmt == "csv":
            yield from _read_csv(stream)
        else:
            yield from _read_jsonl(stream)
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{location}: the file is not valid UTF-8 ({exc.reason}); save it as UTF-8 or pass --encoding"
        ) from exc


def _read_csv(stream: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip().lower() for name in header]
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) > len(names):
            yield line, RowError(f"{len(row)} fields but the header has {len(names)}")
            continue
        yield line, dict(zip(names, row, strict=False))  # short rows: trailing cells empty


def _read_jsonl(stream: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            yield line, RowError(f"invalid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield line, RowError("a line must hold a JSON object")
            continue
        yield line, {str(key).strip().lower(): value for key, value in record.items()}


def parse_timestamp(value: Any, tz: tzinfo) -> datetime:
    """ISO 8601 (with '-' or '/'), or Unix seconds / milliseconds; naive times are in `tz`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _from_epoch(value)
    text = str(value).strip() if value is not None else ""
    if not text:
        raise RowError("missing timestamp")
    if DECIMAL.fullmatch(text) and len(text.lstrip("+-").split(".")[0]) >= 9:
        return _from_epoch(float(text))
    try:
        moment = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        return _loose_datetime(text, tz)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def _loose_datetime(text: str, tz: tzinfo) -> datetime:
    """Spreadsheet-style times without zero padding, such as 2024/5/1 9:05."""
    match = LOOSE_DATETIME.fullmatch(text)
    if not match:
        raise RowError(f"unparseable timestamp {text!r}")
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
        raise RowError(f"unparseable timestamp {text!r}") from None


def _from_epoch(number: float) -> datetime:
    if number > 1e11:  # milliseconds: 1e11 seconds is the year 5138
        number /= 1000
    try:
        return datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise RowError(f"timestamp {number} is out of range") from None


def parse_duration(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError(f"non-numeric duration {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RowError(f"non-numeric duration {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise RowError(f"duration must be a number of seconds >= 0, got {value!r}")
    return seconds


def typed_cell(text: str) -> Any:
    """A spreadsheet cell as a JSON value: numbers as numbers, comma lists as lists."""
    text = text.strip()
    if not text:
        return None
    if INTEGER.fullmatch(text):
        digits = text.lstrip("+-")
        # A leading zero marks an identifier (phone, zip code), not a number.
        return text if len(digits) > 1 and digits.startswith("0") else int(text)
    if DECIMAL.fullmatch(text):
        return float(text)
    if LIST_SEPARATORS.search(text):
        return [typed_cell(part) for part in LIST_SEPARATORS.split(text) if part.strip()]
    return text


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


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
    user_id = _text(fields.get("user_id"))
    if not user_id:
        raise RowError("missing user_id")
    action = _text(fields.get("action"))
    if not action:
        raise RowError("missing action")
    if len(user_id) > 128 or len(action) > 64:
        raise RowError("user_id longer than 128 or action longer than 64 characters")
    return BehaviorRow(
        user_id=user_id,
        action=action,
        occurred_at=parse_timestamp(fields.get("occurred_at"), tz),
        item=_text(fields.get("item"))[:255],
        app=_text(fields.get("app"))[:128],
        media=_text(fields.get("media"))[:128],
        place=_text(fields.get("place"))[:255],
        duration_seconds=parse_duration(fields.get("duration_seconds")),
        extra=extra,
    )


def parse_profile(record: dict[str, Any], *, from_csv: bool) -> tuple[str, dict[str, Any]]:
    key = next((name for name in PROFILE_USER_ID if name in record), None)
    user_id = _text(record.get(key)) if key else ""
    if not user_id:
        raise RowError("missing user_id")
    if len(user_id) > 128:
        raise RowError("user_id longer than 128 characters")
    attributes = {
        name: typed_cell(value) if from_csv and isinstance(value, str) else value
        for name, value in record.items()
        if name != key
    }
    return user_id, attributes


def _check_header(kind: Kind, first: dict[str, Any], location: str) -> None:
    if kind == "behaviors":
        present = {BEHAVIOR_ALIASES[name] for name in first if name in BEHAVIOR_ALIASES}
        missing = [name for name in REQUIRED_BEHAVIOR_FIELDS if name not in present]
        if missing:
            raise ImportFileError(
                f"{location}: no column for {', '.join(missing)} (found: {', '.join(first) or 'nothing'})"
            )
    elif not any(name in first for name in PROFILE_USER_ID):
        raise ImportFileError(f"{location}: no user_id column (found: {', '.join(first)})")


def import_file(
    kind: Kind,
    path: str | Path,
    *,
    fmt: Format | None = None,
    encoding: str = "utf-8-sig",
    tz: tzinfo = UTC,
    strict: bool = False,
    batch_size: int = 5000,
    on_error: Callable[[int, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_errors_kept: int = 1000,
) -> ImportSummary:
    """Import one file; with `strict`, everything is imported in one transaction or nothing.

    `on_error(line, reason)` hears every rejected row as it is found;
    `on_progress(bytes_read)` hears about progress through the file.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    summary = ImportSummary()
    try:
        raw: BinaryIO = path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"{path}: {exc.strerror}") from exc
    with raw:
        binary = gzip.GzipFile(fileobj=raw) if path.suffix.lower() == ".gz" else raw
        stream = io.TextIOWrapper(binary, encoding=encoding, newline="" if fmt == "csv" else None)
        records = read_records(stream, fmt, location=str(path))
        # Strict: one transaction for the whole file, rolled back if any row was bad.
        with transaction.atomic() if strict else nullcontext():
            _import_records(
                kind,
                records,
                fmt,
                tz,
                summary,
                batch_size,
                on_error,
                on_progress,
                raw,
                max_errors_kept,
                stop_writing_on_error=strict,
            )
            if strict and summary.rejected:
                transaction.set_rollback(True)
                summary.committed = False
                summary.imported = summary.updated = summary.duplicates = 0
    return summary


def _import_records(
    kind,
    records,
    fmt,
    tz,
    summary,
    batch_size,
    on_error,
    on_progress,
    raw,
    max_errors_kept,
    *,
    stop_writing_on_error,
) -> None:
    from_csv = fmt == "csv"
    behaviors: list[BehaviorRow] = []
    profiles: dict[str, dict[str, Any]] = {}
    checked_header = False

    def reject(line: int, reason: str) -> None:
        summary.rejected += 1
        if len(summary.errors) < max_errors_kept:
            summary.errors.append((line, reason))
        if on_error:
            on_error(line, reason)

    def flush() -> None:
        writing = not (stop_writing_on_error and summary.rejected)
        if kind == "behaviors":
            if writing:
                inserted = behaviors_insert(behaviors)
                summary.imported += inserted
                summary.duplicates += len(behaviors) - inserted
            behaviors.clear()
        else:
            if writing:
                inserted, updated = profiles_upsert(profiles)
                summary.imported += inserted
                summary.updated += updated
                summary.duplicates += len(profiles) - inserted - updated
            profiles.clear()
        if on_progress:
            on_progress(raw.tell())

    for line, record in records:
        summary.read += 1
        if isinstance(record, RowError):
            reject(line, str(record))
            continue
        if from_csv and not checked_header:
            _check_header(kind, record, str(raw.name))
            checked_header = True
        try:
            if kind == "behaviors":
                behaviors.append(parse_behavior(record, tz, from_csv=from_csv))
            else:
                user_id, attributes = parse_profile(record, from_csv=from_csv)
                if user_id in profiles:
                    # The same user twice in a batch: the later row wins, like a later batch would.
                    summary.duplicates += 1
                profiles[user_id] = attributes
        except RowError as exc:
            reject(line, str(exc))
            continue
        if len(behaviors) >= batch_size or len(profiles) >= batch_size:
            flush()
    flush()
