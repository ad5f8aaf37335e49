"""Bulk-write helpers shared by the importers and the job engine.

Large writes go through a per-connection temporary staging table filled by
COPY on PostgreSQL (≈4× faster than executemany) or executemany on SQLite,
then one INSERT … SELECT does the real work (conflict handling, joins) in SQL.
"""

import contextlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from django.db import DatabaseError, connection
from django.db.models import DateTimeField, Func, Value


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


def rows_sql(rows: list[dict[str, Any]], columns: dict[str, str]) -> tuple[str, list[Any]]:
    """A table `v` of these rows, and its parameters, so that one statement reads or writes a whole
    chunk (no statement per row, no staging table, no limit on parameters). PostgreSQL unnests one
    array per column: 2-4× faster than jsonb_to_recordset for a chunk's update (measured here);
    SQLite reads the rows from one JSON parameter. `columns` maps each key to its PostgreSQL type."""
    if is_postgresql():
        arrays = [array_text([row[name] for row in rows], kind) for name, kind in columns.items()]
        casts = ", ".join(f"%s::{kind}[]" for kind in columns.values())
        return f"unnest({casts}) AS v({', '.join(columns)})", arrays
    named = ", ".join(f"value ->> '{name}' AS {name}" for name in columns)
    return f"(SELECT {named} FROM json_each(%s)) AS v", [json_text(rows)]


def in_values(column: str, values: list[Any], kind: str = "text") -> tuple[str, list[Any]]:
    """The condition that `column` is one of these values, and its one parameter, for a whole chunk.
    PostgreSQL gets `= ANY(array)`, not `IN (SELECT unnest(…))`: an index scan then returns the
    rows in the index's order, where the semi-join hashed the values and sorted every row again
    (measured on a chunk's 45,000 behaviours: 0.26 → 0.16 ms of PostgreSQL's CPU a user; the sort
    had spilled to disk)."""
    if is_postgresql():
        return f"{column} = ANY(%s::{kind}[])", [array_text(values, kind)]
    return f"{column} IN (SELECT value FROM json_each(%s))", [json_text(values)]


NUMBER_TYPES = {"smallint", "integer", "bigint", "real", "double precision"}


def array_text(values: Iterable[Any], kind: str) -> str:
    """PostgreSQL's input form of a one-dimensional array of `kind`, to pass as one parameter cast to
    `kind[]`. The connection binds parameters on the client, and psycopg quotes a list's elements
    one by one in Python: a commit's nine arrays of 100 values took 0.7-0.8 ms to quote (measured:
    1.4 ms a statement with lists, 0.4 ms with these strings); one string is quoted at once. Text
    is double-quoted with its backslashes and double quotes escaped, as the array syntax asks
    (numbers need neither); None is NULL."""
    if kind in NUMBER_TYPES:
        return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"
    return "{" + ",".join(map(_array_element, values)) + "}"


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def copy_rows(
    cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, types: Sequence[str] = ()
) -> None:
    """Append rows to `table`; values must already be database-ready (see datetime_adapter).
    With the columns' PostgreSQL `types`, COPY goes in binary (no text to build and parse)."""
    cols = ", ".join(columns)
    if is_postgresql():
        import psycopg
        from psycopg.adapt import PyFormat

        binary = " (FORMAT BINARY)" if types else ""
        if types:
            # jsonb values come in their binary form already (json_adapter), to be sent unchanged:
            # by the dumper bytes get, in C (psycopg's dumper for bytea by type name is Python's).
            cursor.adapters.register_dumper(bytes, psycopg.adapters.get_dumper(bytes, PyFormat.BINARY))
        with cursor.copy(f"COPY {table} ({cols}) FROM STDIN{binary}") as copy:
            if types:
                copy.set_types(["bytea" if kind == "jsonb" else kind for kind in types])
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


def json_adapter() -> Callable[[Any], Any]:
    """Turns values into what copy_rows' binary COPY takes for a jsonb column (PostgreSQL), or the
    JSON text SQLite stores."""
    if is_postgresql():
        return _jsonb_binary
    return json_text


def _jsonb_binary(value: Any) -> bytes:
    """jsonb's binary form: its format version (1), then the JSON text, which copy_rows sends as it
    is. psycopg's Jsonb wrapper and its dumper, both Python, cost more than orjson itself: a rules
    chunk's Python time per user fell 7 % without them (measured)."""
    return b"\x01" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


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


def now_sql(offset: str | None = None) -> str:
    """SQL for the database's clock, plus `offset` (SQL giving seconds, e.g. a parameter) if given.

    Leases and retries are stamped and compared with this one clock, never a worker's own: a worker
    whose clock runs ahead would otherwise take over live leases, one behind would keep dead ones.
    SQLite: the text form Django stores (UTC, compared as text; the clock has milliseconds).
    """
    if is_postgresql():
        return "STATEMENT_TIMESTAMP()" + (f" + make_interval(secs => {offset})" if offset else "")
    shift = f", ({offset}) || ' seconds'" if offset else ""
    return f"(STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW'{shift}) || '000')"  # microseconds, as Django writes


def connection_reset() -> None:
    """Drop this thread's connection (perhaps broken: a restarted server, a terminated backend) so
    that the next query opens a fresh one."""
    with contextlib.suppress(DatabaseError):
        connection.close()


def transaction_lock(name: str) -> None:
    """Hold a lock named `name` until the current transaction ends: one such transaction at a time.
    PostgreSQL: an advisory lock; SQLite's transactions (IMMEDIATE here) already run one at a time."""
    assert connection.in_atomic_block, "a transaction lock outside a transaction would lock nothing"
    if is_postgresql():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def database_now() -> datetime:
    """The database's clock, read (see now_sql)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {now_sql('%s')}", [0.0])
        (value,) = cursor.fetchone()
    return value if is_postgresql() else datetime.fromisoformat(value).replace(tzinfo=UTC)


class DatabaseNow(Func):
    """The database's clock `seconds` from now, as an ORM expression (see now_sql)."""

    output_field = DateTimeField()

    def __init__(self, seconds: float = 0):
        super().__init__(Value(float(seconds)))

    def as_sql(self, compiler, connection, **extra):
        offset, params = compiler.compile(self.source_expressions[0])
        return now_sql(offset), params
