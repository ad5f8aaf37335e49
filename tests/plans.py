"""What PostgreSQL would do for a statement the code sent, for tests of its query plans."""

import re

from django.db import connection, transaction

SORT_NODE = re.compile(r"(^|-> +)Sort ", re.MULTILINE)  # a full sort (not an Incremental Sort)


def index_path_plan(sql: str) -> str:
    """The plan PostgreSQL makes for this statement (as sent, its values in it: CaptureQueriesContext
    keeps it so) when it must read through indexes. Whether it takes an index depends on the tables'
    sizes, and a test's small tables make a sequential or bitmap scan cheaper: turned off, they show
    what the index path would cost (a sort, or none)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())
