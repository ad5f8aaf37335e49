"""What the database can store, said once for every way data arrives (API bodies, job options).

PostgreSQL refuses NUL in text and jsonb, UTF-8 has no unpaired surrogates (JSON's "\\ud800"
escapes make them), jsonb has no Infinity or NaN, and id and counter columns hold 64 bits. Each
of these used to surface as a 500 from deep inside a write; here they are found up front and
named, with the path of the field that holds them.
"""

import math
import re
from collections.abc import Iterator
from typing import Any

from django.utils.translation import gettext as _

UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def text_problem(text: str) -> str:
    """Why this text cannot be stored, or ""."""
    found = UNSTORABLE_TEXT.search(text)
    if found is None:
        return ""
    if found.group() == "\x00":
        return _("NUL characters are not allowed")
    return _("unpaired surrogate characters (U+D800–U+DFFF) are not allowed")


def number_problem(number: int | float) -> str:
    """Why this JSON number cannot be stored, or ""."""
    if isinstance(number, bool):
        return ""
    if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
        return _("whole numbers must fit in 64 bits")
    if isinstance(number, float) and not math.isfinite(number):
        return _("must be a finite number")
    return ""


def depth_problem(limit: int) -> str:
    return _("nested deeper than %(limit)s levels (API_MAX_JSON_DEPTH)") % {"limit": limit}


def json_problem(data: Any, *, max_depth: int) -> tuple[str, str] | None:
    """The first (path, reason) in decoded JSON that cannot be stored or nests deeper than
    `max_depth`, else None. The path reads like `options.model` or `user_ids[3]` ("" for the
    document itself); for nesting, it names the top-level field holding it. Iterative: any depth
    is walked without recursion."""
    for path, depth, value in _walk(data):
        if depth > max_depth:
            top = path[0].lstrip(".") if path and path[0].startswith(".") else ""
            return top, depth_problem(max_depth)
        if isinstance(value, str):
            reason = text_problem(value)
        elif isinstance(value, int | float):
            reason = number_problem(value)
        else:
            continue
        if reason:
            return "".join(path).lstrip("."), reason
    return None


def _walk(data: Any) -> Iterator[tuple[list[str], int, Any]]:
    """(path parts, depth, value) for every value and key, parents before children; a key is
    reported as its own value at its parent's path. Containers count one level each."""
    todo: list[tuple[list[str], int, Any]] = [([], 0, data)]
    while todo:
        path, depth, value = todo.pop()
        if isinstance(value, dict):
            yield path, depth + 1, value
            for key, item in reversed(value.items()):
                yield path, depth + 1, key
                todo.append(([*path, f".{key}"], depth + 1, item))
        elif isinstance(value, list):
            yield path, depth + 1, value
            todo.extend(
                ([*path, f"[{index}]"], depth + 1, item) for index, item in reversed(list(enumerate(value)))
            )
        else:
            yield path, depth, value
