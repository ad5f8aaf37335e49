"""What PostgreSQL would do for a statement the code sent, for tests of its query plans."""

import re
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

SORT_NODE = re.compile(r"(^|-> +)Sort ", re.MULTILINE)  # a full sort (not an Incremental Sort)


def statements_of(action: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The statements (SQL and parameters) `action` sends on this thread's connection."""
    statements = []

    def keep(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        action()
    return statements


def index_path_plan(sql: str, params: Any) -> str:
    """The plan PostgreSQL makes for this statement when it must read through indexes. Whether it
    takes an index depends on the tables' sizes, and a test's small tables make a sequential or
    bitmap scan cheaper: turned off, they show what the index path would cost (a sort, or none)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())
