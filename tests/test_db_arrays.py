"""A chunk's arrays reach PostgreSQL as one string each (eventproject.db.array_text): every value
must come back exactly as it was sent, whatever characters a user id or an error message holds."""

import pytest
from django.db import connection

from eventproject.db import in_values, rows_sql

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's array syntax"),
]

HOSTILE_TEXTS = [
    "",
    "plain",
    "NULL",
    "null",
    ' spaced "quoted" ',
    "back\\slash\\",
    "\\",
    '"',
    "{braces},[brackets]",
    "a,b",
    "tab\tnew\nline\r",
    "'; DROP TABLE jobs_job; --",
    "比亚迪 汉EV 4S店",
    "emoji 🚗",
    None,
]


def test_text_values_come_back_as_they_were_sent():
    chosen, params = in_values("value", HOSTILE_TEXTS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", params)
        assert cursor.fetchone()[0] == HOSTILE_TEXTS
        # The condition finds each of them among the same texts sent by psycopg's own quoting (NULL
        # equals nothing, itself included).
        cursor.execute(
            "SELECT array_agg(value ORDER BY n) FROM unnest(%s::text[]) WITH ORDINALITY t(value, n) "
            f"WHERE {chosen}",
            [HOSTILE_TEXTS, *params],
        )
        assert cursor.fetchone()[0] == [text for text in HOSTILE_TEXTS if text is not None]


def test_rows_of_every_type_come_back_as_they_were_sent():
    rows = [
        {"id": 2**63 - 1, "text": text, "small": -(2**31), "real": real}
        for text, real in zip(HOSTILE_TEXTS, [0.0, -1.5, 1e-300, 1e300, 1 / 3, None] * 3, strict=False)
    ]
    columns = {"id": "bigint", "text": "text", "small": "integer", "real": "double precision"}
    table, params = rows_sql(rows, columns)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, text, small, real FROM {table}", params)
        assert [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()] == rows
