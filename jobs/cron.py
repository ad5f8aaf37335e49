"""When a schedule is due: five-field cron expressions (croniter) read as wall-clock times in the
configured TIME_ZONE.

Each wall-clock time a schedule names runs once, also across daylight-saving changes: a time that
does not exist on the day the clocks go forward runs shifted by the change (02:30 → 03:30 in
Berlin), and a time that exists twice on the day they go back runs at its first occurrence only.
(croniter alone, given aware times, would run a daily 02:30 twice on that day.)
"""

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter
from django.conf import settings
from django.utils.translation import gettext as _

ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class CronInvalid(ValueError):
    """Not a cron expression a schedule can use; the message says why."""


def cron_clean(expression: str) -> str:
    """The expression with its fields separated by single spaces; CronInvalid when it is not five
    fields (minute, hour, day of month, month, day of week) or an @alias, or never comes."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronInvalid(_("Give a cron expression, e.g. '0 3 * * *' (every day at 03:00)."))
    fields = expression.split()
    if len(fields) != 5 and not (len(fields) == 1 and fields[0].lower() in ALIASES):
        raise CronInvalid(
            _(
                "A cron expression has five fields (minute, hour, day of month, month, day of week), "
                "e.g. '0 3 * * *'; got %(count)s."
            )
            % {"count": len(fields)}
        )
    cleaned = " ".join(fields)
    if any(part.lower() == "r" or part.lower().startswith("r(") for part in re.split(r"[\s,/-]", cleaned)):
        # croniter's random values: a fresh draw each time the next run is computed, so a schedule
        # would run at a different time on each look, several times a day.
        raise CronInvalid(_("Random values (R) are not supported; name the time, e.g. '17 3 * * *'."))
    try:
        if not croniter.is_valid(cleaned):
            raise CronInvalid(_("%(expression)r is not a valid cron expression.") % {"expression": cleaned})
        croniter(cleaned, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise CronInvalid(_("%(expression)r never comes.") % {"expression": cleaned}) from None
    except CroniterError:
        raise CronInvalid(
            _("%(expression)r is not a valid cron expression.") % {"expression": cleaned}
        ) from None
    return cleaned


def cron_next(expression: str, after: datetime, zone: ZoneInfo | None = None) -> datetime:
    """The first time strictly after the aware `after` that the expression names, read as wall
    clock times in `zone` (default TIME_ZONE); aware, in that zone."""
    zone = zone or ZoneInfo(settings.TIME_ZONE)
    after = after.astimezone(UTC)  # compared in UTC: times sharing a zone compare as wall times
    times = croniter(expression, after.astimezone(zone).replace(tzinfo=None, fold=0))
    while True:
        # fold=0: a wall time that exists twice is its first occurrence; one in a gap is read
        # with the offset before the change, i.e. shifted forward by it.
        candidate = times.get_next(datetime).replace(tzinfo=zone, fold=0).astimezone(UTC)
        if candidate > after:
            return candidate.astimezone(zone)
