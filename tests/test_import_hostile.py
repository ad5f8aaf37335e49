"""Imports never crash on a row: every hostile row of tests/fixtures/hostile/imports.py is a
`file:line: reason`, the rows around it are imported, and --strict imports nothing."""

import contextlib
import gzip
import os
import threading
import tracemalloc

import pytest
from django.core.management.base import CommandError

from extraction.importers import import_file
from extraction.models import Behavior
from tests.fixtures.hostile.imports import CSV_GOOD, CSV_HEADER, CSV_KEPT_AS_TEXT, CSV_ROWS, GOOD, JSONL_ROWS

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("what", "line", "reason"), JSONL_ROWS, ids=[r[0] for r in JSONL_ROWS])
def test_a_hostile_json_line_is_reported_and_the_import_goes_on(run, write_file, what, line, reason):
    path = write_file("hostile.jsonl", GOOD + b"\n" + line + b"\n" + GOOD.replace(b'"ok"', b'"ok2"') + b"\n")
    out, err = run("import_data", "behaviors", path)
    assert f"{path}:2: " in err and reason in err, err[:500]
    assert "imported 2" in out and "rejected 1" in out
    assert sorted(Behavior.objects.values_list("user_id", flat=True)) == ["ok", "ok2"]
    assert len(err) < 1000  # the message quotes at most a little of the row


@pytest.mark.parametrize(("what", "record", "reason"), CSV_ROWS, ids=[r[0] for r in CSV_ROWS])
def test_a_hostile_csv_record_is_reported_and_the_import_goes_on(run, write_file, what, record, reason):
    path = write_file("hostile.csv", CSV_HEADER + CSV_GOOD + record + CSV_GOOD.replace(b"ok,", b"ok2,"))
    out, err = run("import_data", "behaviors", path, "--show-errors", "1")
    assert err.startswith(f"{path}:3: ") and reason in err.splitlines()[0], err[:500]
    assert "imported 2" in out
    assert sorted(Behavior.objects.values_list("user_id", flat=True)) == ["ok", "ok2"]


def test_numbers_a_database_cannot_hold_stay_text_in_csv(run, write_file):
    out, _ = run("import_data", "behaviors", write_file("a.csv", CSV_HEADER + CSV_KEPT_AS_TEXT))
    assert "imported 1" in out
    assert Behavior.objects.get().extra == {"price": "123456789012345678901234567890"}


def test_strict_imports_none_of_a_file_with_one_hostile_row(run, write_file):
    lines = [GOOD] + [line for _, line, _ in JSONL_ROWS] + [GOOD.replace(b'"ok"', b'"ok2"')]
    path = write_file("hostile.jsonl", b"\n".join(lines) + b"\n")
    with pytest.raises(CommandError, match=f"--strict: {len(JSONL_ROWS)} bad rows, nothing was imported"):
        run("import_data", "behaviors", path, "--strict")
    assert not Behavior.objects.exists()
    out, err = run("import_data", "behaviors", path)
    assert f"imported 2, updated 0, duplicates 0, rejected {len(JSONL_ROWS)}" in out
    assert [line.split(": ", 1)[0] for line in err.splitlines()[: len(JSONL_ROWS)]] == [
        f"{path}:{n}" for n in range(2, len(JSONL_ROWS) + 2)
    ]


def good_rows(count: int) -> bytes:
    return b"".join(
        f'{{"user_id": "u{n}", "action": "browse", "timestamp": "2024-06-01 10:{n % 60:02d}:00"}}\n'.encode()
        for n in range(count)
    )


def test_a_truncated_gz_keeps_what_was_read_and_says_where_it_broke(run, write_file):
    whole = gzip.compress(good_rows(2000))
    path = write_file("cut.jsonl.gz", whole[: len(whole) // 2])
    out, err = run("import_data", "behaviors", path)
    imported = Behavior.objects.count()
    assert 0 < imported < 2000
    assert f"{path}:{imported + 1}: the compressed file is truncated or damaged" in err
    assert "nothing after this line could be read" in err
    assert f"imported {imported}" in out and "rejected 1" in out
    with pytest.raises(CommandError, match="--strict: 1 bad rows"):
        run("import_data", "behaviors", write_file("cut2.jsonl.gz", whole[: len(whole) // 2]), "--strict")


@pytest.mark.parametrize(
    ("encoding", "content", "imported"),
    [
        ("utf-16", (CSV_HEADER + CSV_GOOD).decode().encode("utf-16-le"), 0),  # no byte order mark
        ("utf-16-le", (CSV_HEADER + CSV_GOOD).decode().encode("utf-16-le") + b"\x00", 1),  # a stray byte
        ("utf-32", b"\xff\xff\xff\x7f" * 8, 0),  # no such character
    ],
)
def test_a_file_its_encoding_cannot_read_is_reported_at_its_line_not_a_traceback(
    run, write_file, encoding, content, imported
):
    path = write_file("wide.csv", content)
    out, err = run("import_data", "behaviors", path, "--encoding", encoding)
    assert f"{path}:" in err and "cannot be read as its encoding says" in err, err
    assert f"imported {imported}" in out and "rejected 1" in out


def test_the_command_refuses_what_it_cannot_use_naming_the_option(run, write_file, tmp_path):
    with pytest.raises(CommandError, match="^--show-errors must be 0 or more"):
        run("import_data", "behaviors", write_file("a.csv", CSV_HEADER + CSV_GOOD), "--show-errors", "-2")
    with pytest.raises(CommandError, match=f"^{tmp_path}: a folder, not a file"):
        run("import_data", "behaviors", str(tmp_path))
    with pytest.raises(CommandError, match=f"^{tmp_path / 'gone.csv'}: no such file"):
        run("import_data", "behaviors", str(tmp_path / "gone.csv"))


def test_a_gzip_bomb_is_skipped_line_by_line_in_bounded_memory(write_file, settings):
    """One 30 MB line of a 30 kB file between good rows: the old reader held the whole line."""
    bomb = gzip.compress(
        good_rows(1) + b'{"user_id": "bomb", "item": "' + b"A" * 30_000_000 + b'"}\n' + GOOD + b"\n"
    )
    path = write_file("bomb.jsonl.gz", bomb)
    errors = []
    tracemalloc.start()
    try:
        summary = import_file("behaviors", path, on_error=lambda line, reason: errors.append((line, reason)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert errors == [(2, "line longer than 65,536 characters (IMPORT_MAX_LINE_CHARS)")]
    assert (summary.imported, summary.rejected) == (2, 1)
    assert peak < 5_000_000, f"peak {peak:,} bytes of Python memory"


def test_a_profile_over_the_attribute_limit_is_reported(run, write_file):
    big = "兴趣，" * 6000  # a comma list (full-width commas) of 6,000 entries
    path = write_file("p.csv", f"user_id,interests,city\nu1,SUV,北京\nu2,{big},上海\n".encode())
    out, err = run("import_data", "profiles", path)
    assert f"{path}:3: the attributes take" in err and "(IMPORT_MAX_ATTRIBUTES_BYTES)" in err
    assert "imported 1" in out and "rejected 1" in out


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])  # \r alone: files of old Macs' spreadsheets
def test_a_line_too_long_is_skipped_alone_whatever_ends_the_lines(write_file, settings, newline):
    settings.IMPORT_MAX_LINE_CHARS = 1024
    rows = ["user_id,action,timestamp", "u1,a,2024-06-01", f"u2,{'x' * 3000},2024-06-01", "u3,c,2024-06-01"]
    path = write_file("a.csv", newline.join([*rows, "u4,d,2024-06-01", ""]))
    errors = []
    summary = import_file("behaviors", path, on_error=lambda line, reason: errors.append((line, reason)))
    assert errors == [(3, "line longer than 1,024 characters (IMPORT_MAX_LINE_CHARS)")]
    assert (summary.read, summary.imported, summary.rejected) == (4, 3, 1)


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
def test_a_line_of_exactly_the_limit_is_read(write_file, settings, name):
    """Its line break made it one character over the record's limit: a CSV row was refused as "a
    quote that never closes?", and a JSON line stopped the import with that error."""
    settings.IMPORT_MAX_LINE_CHARS = 1024
    if name.endswith(".csv"):
        rows = ["user_id,action,timestamp,note", "u1,a,2024-06-01,", "u3,c,2024-06-01,"]
        long_row = "u2,b,2024-06-01," + "x" * (1024 - len("u2,b,2024-06-01,"))
    else:
        rows = [f'{{"user_id": "{user}", "action": "a", "timestamp": "2024-06-01"}}' for user in ("u1", "u3")]
        long_row = '{"user_id": "u2", "action": "b", "timestamp": "2024-06-01", "note": "x"}'
        long_row = long_row.replace('"x"', '"' + "x" * (1024 - len(long_row) + 1) + '"')
    assert len(long_row) == 1024
    path = write_file(name, "\n".join([*rows[:-1], long_row, rows[-1], ""]))
    errors = []
    summary = import_file("behaviors", path, on_error=lambda line, reason: errors.append((line, reason)))
    assert (errors, summary.imported) == ([], 3)


def test_a_line_too_long_inside_a_quoted_field_drops_that_record_and_no_more(write_file, settings):
    """The reader started afresh after the long line, inside the quoted field: the field's tail
    became a row of its own, and its closing quote opened a field that swallowed the next rows."""
    settings.IMPORT_MAX_LINE_CHARS = 1024
    rows = [
        "user_id,action,timestamp,item_id,app_id",
        'u1,a,2024-06-01,"a note',  # line 2: a quoted field spans lines 2 to 4
        "x" * 3000,
        'its tail", "quoted",app',
        "u2,b,2024-06-01,,",  # line 5
        'u3,c,2024-06-01,"two',
        'lines",',
    ]
    path = write_file("a.csv", "\n".join([*rows, ""]))
    errors = []
    summary = import_file("behaviors", path, on_error=lambda line, reason: errors.append((line, reason)))
    assert errors == [(2, "line longer than 1,024 characters (IMPORT_MAX_LINE_CHARS)")]
    assert (summary.read, summary.imported, summary.rejected) == (3, 2, 1)
    assert sorted(Behavior.objects.values_list("user_id", "item")) == [("u2", ""), ("u3", "two\nlines")]


def test_a_header_too_long_refuses_the_file(run, write_file, settings):
    settings.IMPORT_MAX_LINE_CHARS = 1024
    path = write_file("a.csv", f"user_id,action,timestamp,{'x' * 3000}\nu1,a,2024-06-01,\n")
    with pytest.raises(CommandError, match="a.csv: the header: line longer than 1,024 characters"):
        run("import_data", "behaviors", path)


def test_a_header_that_never_ends_is_refused_without_reading_on(run, tmp_path, settings):
    """An endless first line (a pipe from a runaway producer, /dev/zero, a binary file of one line)
    used to be read on to its end, which never came, before the header was refused."""
    settings.IMPORT_MAX_LINE_CHARS = 1024
    fifo = tmp_path / "endless.csv"
    os.mkfifo(fifo)
    written = 0

    def produce() -> None:  # stops at 20 MB so that the old code ends too, and fails the assertion
        nonlocal written
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
            while written < 20_000_000:
                pipe.write(b"x" * 65_536)
                written += 65_536

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with pytest.raises(CommandError, match="endless.csv: the header: line longer than 1,024 characters"):
        run("import_data", "behaviors", str(fifo))
    producer.join(timeout=30)
    assert not producer.is_alive()
    assert written < 1_000_000


def test_a_header_whose_quote_never_closes_refuses_the_file(run, write_file, settings):
    """Its record runs past the limit: before, the header was dropped as one bad row and the next
    line was taken for the header."""
    settings.IMPORT_MAX_LINE_CHARS = 1024
    rows = ['user_id,action,"timestamp', *["u1,browse,2024-06-01 10:00:00"] * 100]
    with pytest.raises(CommandError, match="the header: a record longer than 1,024 characters"):
        run("import_data", "behaviors", write_file("a.csv", "\n".join(rows)))


def test_a_crlf_cut_by_the_size_limit_between_its_characters_adds_no_line(write_file, settings):
    """A line of 1,025 characters and its \\r\\n is read in pieces of 1,026: the first ends on the
    \\r, the \\n comes alone. It is the same line's end, not a line of its own."""
    settings.IMPORT_MAX_LINE_CHARS = 1024
    long_row = "u2,b,2024-06-01," + "x" * (1025 - len("u2,b,2024-06-01,"))
    rows = [
        "user_id,action,timestamp,note",
        "u1,a,2024-06-01,",
        long_row,
        "u3,c,2024-06-01,",
        "u4,,2024-06-01,",
    ]
    path = write_file("a.csv", "\r\n".join([*rows, ""]))
    errors = []
    summary = import_file("behaviors", path, on_error=lambda line, reason: errors.append((line, reason)))
    assert errors == [(3, "line longer than 1,024 characters (IMPORT_MAX_LINE_CHARS)"), (5, "missing action")]
    assert (summary.read, summary.imported, summary.rejected) == (4, 2, 2)


def test_an_import_interrupted_says_what_stays(run, write_file, monkeypatch):
    """Ctrl-C gave a traceback and no word of the batches already committed."""
    from extraction.management.commands import import_data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(import_data, "import_file", interrupted)
    with pytest.raises(CommandError, match="^interrupted: the batches committed so far stay") as stopped:
        run("import_data", "behaviors", write_file("a.csv", CSV_HEADER + CSV_GOOD))
    assert stopped.value.returncode == 130


def test_ctrl_c_while_the_statistics_are_made_still_reports_the_import(run, write_file, monkeypatch):
    """The rows are in when the tables are analyzed: a Ctrl-C then printed a traceback, no summary."""
    from extraction.management.commands import import_data

    def interrupted(*models):
        raise KeyboardInterrupt

    monkeypatch.setattr(import_data, "tables_analyze", interrupted)
    out, _ = run("import_data", "behaviors", write_file("a.csv", CSV_HEADER + CSV_GOOD))
    assert "imported 1" in out and Behavior.objects.count() == 1
