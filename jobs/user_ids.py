"""User ids as people give them to a job: a list (the API, the commands), text pasted in a form, a
file of one id a line. Each is counted as every entry point counts: every id, duplicates too."""

import re
from collections.abc import Iterable
from typing import Any, BinaryIO

from django.conf import settings
from django.utils.translation import gettext as _

from eventproject.storable import text_problem

from .errors import NAMED_AT_MOST, JobInvalid

SEPARATORS = re.compile(r"[\s,;，]+")  # between ids pasted in a form


def user_ids_split(text: str) -> list[str]:
    """The ids of text pasted in a form, separated by new lines, spaces, commas or semicolons."""
    return [part for part in SEPARATORS.split(text) if part]


def too_many_ids(count: int) -> str:
    """The refusal of a list longer than JOBS_MAX_USER_IDS, saying how long it was."""
    return _(
        "More than %(limit)s user ids (%(count)s so far): at most %(limit)s per job "
        "(JOBS_MAX_USER_IDS, as in the API). Split the list."
    ) % {"limit": f"{settings.JOBS_MAX_USER_IDS:,}", "count": f"{count:,}"}


# The most a line of a file of user ids may take: a longest id in UTF-8 with room for a byte order
# mark, spaces and its line end. A line is read no further than that (a file of one huge line).
LINE_MAX_BYTES = 2_048


def user_ids_read(handle: BinaryIO) -> list[str]:
    """The user ids of a file, one a line (the admin's upload, `extract --users-file`): blank lines,
    '#' comments and a 'user_id' header are skipped. Read line by line and counted like the API
    counts its list (every id, duplicates too); JobInvalid (field `users_file`) names the first
    line over a limit."""
    ids: list[str] = []

    def refuse(message: str) -> JobInvalid:
        return JobInvalid({"users_file": message})

    limit = max(LINE_MAX_BYTES, settings.USER_ID_MAX_CHARS * 4 + 64)
    number = 0
    while raw := handle.readline(limit + 2):  # room for its line end
        number += 1
        if len(raw.rstrip(b"\r\n")) > limit:
            raise refuse(
                _("Line %(line)s is longer than %(limit)s bytes: not a user id.")
                % {"line": number, "limit": f"{limit:,}"}
            )
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise refuse(_("Line %(line)s is not UTF-8 text.") % {"line": number}) from None
        if not line or line.startswith("#") or (not ids and line == "user_id"):
            continue
        if len(line) > settings.USER_ID_MAX_CHARS:
            raise refuse(
                _("Line %(line)s: a user id longer than %(limit)s characters.")
                % {"line": number, "limit": settings.USER_ID_MAX_CHARS}
            )
        ids.append(line)
        if len(ids) > settings.JOBS_MAX_USER_IDS:
            raise refuse(too_many_ids(len(ids)))
    return ids


def user_ids_clean(user_ids: Iterable[Any], errors: dict[str, str]) -> list[str]:
    """A job's list of user ids (see user_ids_checked); a problem goes to errors["user_ids"]."""
    if isinstance(user_ids, str | bytes) or not isinstance(user_ids, Iterable):
        errors["user_ids"] = _("must be a list of user ids, or null for every user needing extraction")
        return []
    ids = user_ids_checked(user_ids, errors)
    if not ids and "user_ids" not in errors:
        errors["user_ids"] = _("give at least one user id, or null for every user needing extraction")
    return ids


def user_ids_checked(values: Iterable[Any], errors: dict[str, str]) -> list[str]:
    """Each id stripped and checked, duplicates dropped after counting: the one home of what a user
    id may be, for jobs and schedules alike. A problem goes to errors["user_ids"]."""
    ids, seen, bad = [], set(), []
    for position, value in enumerate(values):
        if position >= settings.JOBS_MAX_USER_IDS:  # counted with duplicates, as every entry point counts
            errors["user_ids"] = too_many_ids(position + 1)
            return []
        if isinstance(value, bool) or not isinstance(value, str | int):
            bad.append(_("item %(position)s is not a string") % {"position": position})
            continue
        text = str(value).strip()
        if not text or len(text) > settings.USER_ID_MAX_CHARS:
            bad.append(
                _("item %(position)s is empty or longer than %(limit)s characters")
                % {"position": position, "limit": settings.USER_ID_MAX_CHARS}
            )
        elif problem := text_problem(text):  # a lone surrogate: a command's non-UTF-8 argument byte
            bad.append(_("item %(position)s: %(problem)s") % {"position": position, "problem": problem})
        elif text not in seen:
            seen.add(text)
            ids.append(text)
    if bad:
        errors["user_ids"] = "; ".join(bad[:NAMED_AT_MOST])
    return ids
