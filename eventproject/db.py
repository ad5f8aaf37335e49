"""Bulk-write helpers shared by the importers and the job engine.

Large writes go through a per-connection temporary staging table filled by
COPY on PostgreSQL (≈4× faster than executemany) or executemany on SQLite,
then one INSERT … SELECT does the real work (conflict handling, joins) in SQL.
"""

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from django.db import connection


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def staging_table(cursor, name: str, source_table: str, columns: Sequence[str]) -> None:
    """Create (once per connection) and empty a temp table shaped like `columns` of `source_table`."""
    cols = ", ".join(columns)
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {cols} FROM {source_table} WHERE 1 = 0")
    # PostgreSQL never vacuums temp tables: DELETE would leave every earlier batch behind as dead
    # rows for each later statement to wade through (measured: 0.3 ms to 11 ms per batch over
    # 500,000 rows). TRUNCATE starts afresh. SQLite's DELETE without WHERE truncates already.
    cursor.execute(f"TRUNCATE {name}" if is_postgresql() else f"DELETE FROM {name}")


def copy_rows(cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Append rows to `table`; values must already be database-ready (see db_datetime)."""
    cols = ", ".join(columns)
    if is_postgresql():
        with cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def datetime_adapter() -> Callable[[datetime], Any]:
    """Turns aware datetimes into what the backend stores, for bulk writes.

    SQLite stores UTC text exactly as Django's ORM writes it (str() of the naive
    UTC datetime), so rows written here compare equal to rows the ORM writes.
    """
    if is_postgresql():
        return lambda value: value
    return lambda value: str(value.astimezone(UTC).replace(tzinfo=None))


def json_text(value: Any) -> str:
    """JSON for bulk writes: compact, keys sorted so equal values give equal text (SQLite compares text)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def tables_analyze(*models) -> None:
    """Refresh planner statistics after a bulk load.

    Without it PostgreSQL may keep planning for the empty table it last saw and
    read a user's behaviours with a sequential scan (measured: 5× slower).
    """
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {model._meta.db_table}")
