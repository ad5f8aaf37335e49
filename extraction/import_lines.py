"""The lines and records of an import file, read with bounded memory whatever the file holds.

A physical line is never held longer than IMPORT_MAX_LINE_CHARS (a gzip bomb decompresses to one
line of gigabytes): it is skipped and reported as one bad row. CSV records (quoted fields may span
lines) and JSON Lines objects come out as dicts keyed by lower-cased names, or as the RowError of
their line: invalid text, JSON nested past IMPORT_MAX_JSON_DEPTH, numbers beyond 64 bits, a
truncated .gz. Nothing here writes; the importers (extraction/importers.py) batch what comes out.
"""

import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from django.conf import settings

from .import_cells import UNDECODABLE, UNSTORABLE, ImportFileError, RowError, check_text, shown, undecodable

Format = Literal["csv", "jsonl"]
INT64 = range(-(2**63), 2**63)


def detect_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ImportFileError(f"{path}: cannot tell the format from the name; pass --format csv or jsonl")


class LineTooLong(Exception):
    """A CSV record longer than IMPORT_MAX_LINE_CHARS over its lines (a quote that never closes?)."""


class FileCutShort(Exception):
    """The compressed stream is truncated or damaged, or the text does not decode as its encoding
    says: nothing after this point can be read."""


class BoundedLines:
    """The lines of a text stream, none longer than `limit` characters in memory.

    A longer line (a gzip bomb decompresses to one) is read on in pieces and dropped: a bare line
    break stands in its place and `cut` says why, so that a quoted CSV field it was part of still
    ends where it ends, and the reader reports the record as one bad row (and clears `cut`). A
    record spanning lines (a quoted CSV field with line breaks, or one that never closes) is held
    to the same limit: the reader calls `record_started()` at each record, and LineTooLong is raised
    past it; iteration goes on with the next line (this is an object, not a generator, so that
    csv.reader can keep pulling after an exception). `number` is the count of physical lines
    consumed.
    """

    def __init__(self, stream: io.TextIOBase, limit: int):
        self.stream, self.limit, self.number, self.record_chars = stream, limit, 0, 0
        self.cut = ""  # why the last line returned stands for one that was dropped
        # False while a line too long ends the file (a CSV header): it is then not read to its end,
        # which may never come (a binary file of one endless line, a pipe, /dev/zero).
        self.skip_long = True
        self._back = ""  # a line read ahead, given back

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
            if not self.skip_long:
                raise LineTooLong(f"line longer than {self.limit:,} characters (IMPORT_MAX_LINE_CHARS)")
            while line and not line.endswith(("\n", "\r")):  # skip the rest of this line (\r: old Macs)
                line = self._read()
            if line.endswith("\r"):  # the size limit may have cut a \r\n between its two characters
                following = self._read()
                if following != "\n":
                    self._back = following
            self.cut = f"line longer than {self.limit:,} characters (IMPORT_MAX_LINE_CHARS)"
            return "\n"
        self.record_chars += len(line)
        if self.record_chars - (len(line) - len(line.rstrip("\r\n"))) > self.limit:  # its last line end aside
            self.record_chars = 0
            raise LineTooLong(
                f"a record longer than {self.limit:,} characters (IMPORT_MAX_LINE_CHARS) from this line on; "
                f"a quote that never closes?"
            )
        return line

    def _read(self) -> str:
        if self._back:
            line, self._back = self._back, ""
            return line
        try:
            return self.stream.readline(self.limit + 2)  # room for the line break
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise FileCutShort(
                f"the compressed file is truncated or damaged ({exc}); nothing after this line could be read"
            ) from None
        except UnicodeError as exc:  # what surrogateescape does not cover: UTF-16 without its BOM, say
            raise FileCutShort(
                f"the file cannot be read as its encoding says ({exc}); nothing after this line could be read"
            ) from None


def read_records(
    stream: io.TextIOBase,
    fmt: Format,
    *,
    location: str = "",
    on_header: Callable[[list[str]], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield (line number, record or RowError). A CSV header's names are stripped, lower-cased and
    made unique (see _header_names), then given to `on_header`, which may refuse the file.

    The stream must decode with errors="surrogateescape": a line with bytes invalid in the
    encoding is then one row error, not the end of the import.
    """
    lines = BoundedLines(stream, settings.IMPORT_MAX_LINE_CHARS)
    if fmt == "csv":
        yield from _read_csv(lines, location, on_header)
    else:
        yield from _read_jsonl(lines)


def _read_csv(
    lines: BoundedLines, location: str, on_header: Callable[[list[str]], None] | None
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.reader(lines)
    names: list[str] | None = None
    lines.skip_long = False  # until the header is read
    start = 1
    while True:
        lines.record_chars = 0  # a record starts (record_started(), inlined: once a line)
        try:
            row = next(reader)
        except StopIteration:
            if names is None:  # usually the wrong file, or an export that failed
                raise ImportFileError(f"{location}: the file is empty: no header line") from None
            return
        except (LineTooLong, csv.Error) as exc:
            if names is None:  # the next line is no header either
                raise ImportFileError(f"{location}: the header: {exc}") from None
            yield start, RowError(str(exc))  # the record that began there is dropped
            start, lines.cut = lines.number + 1, ""
            continue
        except FileCutShort as exc:
            yield lines.number + 1, RowError(str(exc))
            return
        line, start = start, lines.number + 1
        if lines.cut:  # a line of this record was dropped: the record is one bad row
            yield line, RowError(lines.cut)
            lines.cut = ""
            continue
        if not any(cell.strip() for cell in row):  # a blank line, or a spreadsheet's row of empty cells
            continue
        if names is None:  # the header
            if UNDECODABLE.search("".join(row)):
                raise ImportFileError(
                    f"{location}: the header is not valid UTF-8; save the file as UTF-8 or pass --encoding"
                )
            names = _header_names(row, location)
            if on_header:
                on_header(names)
            lines.skip_long = True
            continue
        if len(row) > len(names):
            yield line, RowError(f"{len(row)} fields but the header has {len(names)}")
            continue
        text = "".join(row)  # one string: cells of a CSV row nest nothing
        if UNSTORABLE.search(text):
            try:
                check_text(text)
            except RowError as exc:
                yield line, exc
                continue
        yield line, dict(zip(names, row, strict=False))  # short rows: trailing cells empty


def _header_names(row: list[str], location: str) -> list[str]:
    """The header's names, stripped and lower-cased. A name given again becomes name_N (N its
    column), so that no column's cells are lost; a name that cannot be stored refuses the file."""
    names: list[str] = []
    for column, cell in enumerate(row, 1):
        name = cell.strip().lower()
        if "\x00" in name:
            raise ImportFileError(f"{location}: the name of column {column} holds a NUL character")
        while name in names:
            name = f"{name}_{column}"
        names.append(name)
    return names


def _read_jsonl(lines: BoundedLines) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    while True:
        lines.record_started()
        try:
            text = next(lines)
        except StopIteration:
            return
        except FileCutShort as exc:
            yield lines.number + 1, RowError(str(exc))
            return
        if lines.cut:
            yield lines.number, RowError(lines.cut)
            lines.cut = ""
            continue
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
        raise RowError(undecodable())
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
    check_text(record)
    return record


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or int(text) not in INT64:
        raise RowError(f"the number {shown(text)} does not fit in 64 bits")
    return int(text)


def _json_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise RowError(f"the number {shown(text)} is out of range")
    return number


def _json_constant(name: str) -> float:
    raise RowError(f"{name} is not a number JSON allows")
