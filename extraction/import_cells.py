"""Cells and rows of an import: each checked and typed, or refused with a RowError saying why.

A behaviour's columns come in the layouts in use (BEHAVIOR_ALIASES); a timestamp is ISO 8601 (with
'-' or '/', or a spreadsheet's unpadded form) or Unix seconds or milliseconds; spreadsheet cells
become numbers or lists where they look like them. Nothing a row holds goes further if PostgreSQL
could not store it (NUL, invalid text, unpaired surrogates) or if it passes an IMPORT_* limit.
These run once a row, on the import's parsing thread: the common cases take the short path.
"""

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson
from django.conf import settings

from .extractors import BehaviorRecord

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


class RowError(ValueError):
    """One row is bad; the message says why."""


def check_text(value: Any, depth: int = 0) -> None:
    """Refuse what PostgreSQL (and any UTF-8 reader) cannot store, and nesting past the limit."""
    if isinstance(value, str):
        if "\x00" in value:
            raise RowError("a NUL character (\\0) in the text")
        if UNDECODABLE.search(value):
            raise RowError(undecodable())
        if SURROGATE.search(value):
            raise RowError("an unpaired surrogate (\\ud800–\\udfff) in the text")
        return
    if depth >= settings.IMPORT_MAX_JSON_DEPTH and isinstance(value, dict | list):
        raise RowError(f"JSON nested deeper than {settings.IMPORT_MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key, depth + 1)
            check_text(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_text(item, depth + 1)


def undecodable() -> str:
    return "bytes that are not valid text in the file's encoding (save it as UTF-8, or pass --encoding)"


def shown(value: Any, limit: int = 40) -> str:
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
        moment = _text_moment(value.strip(), tz)
    elif isinstance(value, bool | dict | list):
        raise RowError(f"unparseable timestamp {shown(value)}")
    elif isinstance(value, int | float):
        moment = _from_epoch(value)
    else:
        moment = _text_moment(str(value).strip() if value is not None else "", tz)
    if not limits.earliest_year <= moment.year <= limits.latest_year:
        raise RowError(
            f"timestamp {shown(value)} is outside the years {limits.earliest_year}–"
            f"{limits.latest_year} (IMPORT_EARLIEST_YEAR, IMPORT_LATEST_YEAR)"
        )
    return moment


def _loose_datetime(text: str, tz: tzinfo) -> datetime:
    """Spreadsheet-style times without zero padding, such as 2024/5/1 9:05."""
    match = LOOSE_DATETIME.fullmatch(text)
    if not match:
        raise RowError(f"unparseable timestamp {shown(text)}")
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
        raise RowError(f"unparseable timestamp {shown(text)}") from None


def _text_moment(text: str, tz: tzinfo) -> datetime:
    """A timestamp written as text: yyyymmddHHMM[SS], seconds or milliseconds since the epoch (9
    digits or more before any point), ISO 8601 (with / allowed between the date's parts), or a
    looser common form; in `tz` unless it names its own zone."""
    if not text:
        raise RowError("missing timestamp")
    if len(text) in (12, 14) and text.isdigit() and (compact := _compact_moment(text, tz)):
        return compact
    if DECIMAL.fullmatch(text) and len(text.lstrip("+-").split(".")[0]) >= 9:
        return _from_epoch(float(text))
    try:
        moment = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        moment = _loose_datetime(text, tz)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def _compact_moment(text: str, tz: tzinfo) -> datetime | None:
    """yyyymmddHHMM or yyyymmddHHMMSS (common in Chinese logs), when the digits are such a time:
    read as Unix milliseconds, they would land silently in 1973-2001 (12 digits) or past 2286."""
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S" if len(text) == 14 else "%Y%m%d%H%M").replace(tzinfo=tz)
    except ValueError:
        return None


def _from_epoch(number: float) -> datetime:
    try:
        if number > 1e11:  # milliseconds: 1e11 seconds is the year 5138
            number /= 1000
        return datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise RowError(f"timestamp {shown(number)} is out of range") from None


def parse_duration(value: Any, limits: Limits | None = None) -> float | None:
    limits = limits or Limits.from_settings()
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError(f"non-numeric duration {shown(value)}")
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"non-numeric duration {shown(value)}") from None
    if not 0 <= seconds <= limits.max_duration:
        raise RowError(
            f"duration must be from 0 to {limits.max_duration:,} seconds "
            f"(IMPORT_MAX_DURATION_SECONDS), got {shown(value)}"
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
) -> tuple[BehaviorRecord, int]:
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
    row = BehaviorRecord(
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
