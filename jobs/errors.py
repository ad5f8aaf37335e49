"""What the jobs' use cases raise when they refuse; the API, the admin and the commands show the
message as it is."""

from collections.abc import Iterable

from django.utils.translation import gettext as _
from django.utils.translation import ngettext

NAMED_AT_MOST = 20  # users named in a refusal; the others are counted


class JobError(Exception):
    """A use case refused; the message says why in words a person understands."""


class JobInvalid(JobError):
    """Bad input. `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


class JobConflict(JobError):
    """Users already in an active job. `busy` maps each (of at most 20 named) user to that job."""

    def __init__(self, busy: dict[str, int], total: int):
        jobs = sorted(set(busy.values()))
        super().__init__(
            ngettext(
                "%(total)s users are already in an active job (%(users)s; job %(jobs)s)",
                "%(total)s users are already in an active job (%(users)s; jobs %(jobs)s)",
                len(jobs),
            )
            % {"total": total, "users": named(busy, total), "jobs": ", ".join(map(str, jobs))}
        )
        self.busy = busy
        self.job_ids = jobs


class JobStateError(JobError):
    """The job's status does not allow this."""


def named(ids: Iterable[str], total: int) -> str:
    """The first NAMED_AT_MOST of `ids`, and how many more there are."""
    ids = list(ids)[:NAMED_AT_MOST]
    more = _(" and %(count)s more") % {"count": total - len(ids)} if total > len(ids) else ""
    return ", ".join(ids) + more
