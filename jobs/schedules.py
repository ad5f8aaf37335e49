"""Schedules: their use cases (create, change, pause, resume, delete: the admin, the API and the
`schedule` command all come here) and the due check every cluster runs as it heals.

A due schedule is claimed by moving its `next_run_at` on, from the value it was read with to the
first time after now, in one conditional UPDATE: of the clusters that see it due at once, one wins
and starts the job in the same transaction; the others change nothing. Computing the next time
from *now* (not from the missed one) runs a schedule once after any downtime, not once per missed
time. While the schedule's previous job is still active, or when its job would have nobody to
process, the run is skipped and recorded as such.
"""

import logging
import re
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from eventproject.storable import text_problem
from extraction.extractors import UnknownExtractor, extractor_class

from .cron import CronInvalid, cron_clean, cron_next
from .errors import JobError, JobInvalid, JobStateError
from .models import Job, Schedule, ScheduleRun, share_errors
from .services import job_start
from .user_ids import user_ids_checked

CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")

logger = logging.getLogger(__name__)

# What a schedule says, with the defaults of a new one.
FIELDS: dict[str, Any] = {
    "name": "",
    "cron": "",
    "users": Schedule.Users.NEEDING_EXTRACTION,
    "user_ids": [],
    "extractor": "rules",
    "options": {},
    "priority": Job.Priority.NORMAL,
    "max_workers": None,
    "active": True,
}


def schedule_clean(values: dict[str, Any]) -> dict[str, Any]:
    """Check what a schedule says; the cleaned values, or JobInvalid naming each bad field."""
    errors: dict[str, str] = {}
    cleaned = {**values}
    name = values["name"]
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > Schedule.NAME_MAX_CHARS:
        errors["name"] = _("give a name of 1 to %(limit)s characters") % {"limit": Schedule.NAME_MAX_CHARS}
    elif CONTROL_CHARACTERS.search(name):  # a terminal would run them (`schedule list`)
        errors["name"] = _("control characters are not allowed")
    elif unstorable := text_problem(name):
        errors["name"] = unstorable
    else:
        cleaned["name"] = name.strip()
    try:
        cleaned["cron"] = cron_clean(values["cron"])
    except CronInvalid as exc:
        errors["cron"] = str(exc)
    else:
        if len(cleaned["cron"]) > Schedule.CRON_MAX_CHARS:
            errors["cron"] = _("at most %(limit)s characters") % {"limit": Schedule.CRON_MAX_CHARS}
    if values["users"] not in Schedule.Users.values:
        errors["users"] = _("must be one of %(values)s") % {"values": ", ".join(Schedule.Users.values)}
    else:
        _user_ids_clean(values["users"], values["user_ids"], cleaned, errors)
    try:
        given = values["options"] or {}
        options = extractor_class(values["extractor"]).clean_options(given)
        # Only the options given: each job gets the defaults of its day (a new default model, say).
        cleaned["options"] = {key: value for key, value in options.items() if key in given}
    except UnknownExtractor as exc:
        errors["extractor"] = str(exc)
    except ValidationError as exc:
        errors.update({field: " ".join(messages) for field, messages in exc.message_dict.items()})
    errors.update(share_errors(values["priority"], values["max_workers"]))
    if errors:
        raise JobInvalid(errors)
    return cleaned


def _user_ids_clean(users: str, user_ids: Any, cleaned: dict[str, Any], errors: dict[str, str]) -> None:
    if users != Schedule.Users.LIST:
        if user_ids:
            errors["user_ids"] = _("only a schedule over a list of users names users")
    elif not isinstance(user_ids, list) or not user_ids:
        errors["user_ids"] = _("give the users of the list")
    else:
        cleaned["user_ids"] = user_ids_checked(user_ids, errors)


def schedule_create(*, created_by=None, **values: Any) -> Schedule:
    """A new schedule (JobInvalid naming each bad field); active ones get their next run time."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown schedule fields: {sorted(unknown)}")
    cleaned = schedule_clean({**FIELDS, **values})
    next_run_at = cron_next(cleaned["cron"], timezone.now()) if cleaned["active"] else None
    try:
        with transaction.atomic():
            return Schedule.objects.create(**cleaned, next_run_at=next_run_at, created_by=created_by)
    except IntegrityError:
        raise JobInvalid(
            {"name": _("a schedule named %(name)r exists") % {"name": cleaned["name"]}}
        ) from None


def schedule_update(schedule: Schedule, **changes: Any) -> Schedule:
    """Change what a schedule says (JobInvalid naming each bad field), applied to its row as it is
    now, locked: a pause or another change made meanwhile stays. A new cron expression, a pause or
    a resume sets the next run time afresh: after now, or none while paused. Moving away from a
    list of users drops the list; another extractor starts from its own default options."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown schedule fields: {sorted(unknown)}")
    try:
        with transaction.atomic():
            current = Schedule.objects.select_for_update().filter(id=schedule.id).first()
            if current is None:
                raise JobStateError(_("the schedule was deleted"))
            if changes.get("users", Schedule.Users.LIST) != Schedule.Users.LIST:
                changes.setdefault("user_ids", [])
            if changes.get("extractor", current.extractor) != current.extractor:
                changes.setdefault("options", {})
            now = {name: getattr(current, name) for name in FIELDS}
            if {**now, **changes} == {**now, "active": False}:
                # A pause alone always works, even of a schedule its checks would now refuse (an
                # extractor since removed): a paused one starts nothing.
                cleaned = {**now, "active": False}
            else:
                cleaned = schedule_clean({**now, **changes})
            if (
                cleaned["cron"] != current.cron
                or cleaned["active"] != current.active
                or (cleaned["active"] and current.next_run_at is None)
            ):
                cleaned["next_run_at"] = (
                    cron_next(cleaned["cron"], timezone.now()) if cleaned["active"] else None
                )
            Schedule.objects.filter(id=schedule.id).update(**cleaned)
    except IntegrityError:
        raise JobInvalid(
            {"name": _("a schedule named %(name)r exists") % {"name": cleaned["name"]}}
        ) from None
    schedule.refresh_from_db()
    return schedule


def schedule_pause(schedule: Schedule) -> Schedule:
    return schedule_update(schedule, active=False)


def schedule_resume(schedule: Schedule) -> Schedule:
    return schedule_update(schedule, active=True)


def schedule_delete(schedule: Schedule) -> None:
    """Delete a schedule and its runs; the jobs it started stay (their `schedule` becomes empty)."""
    schedule.delete()


# The due check ----------------------------------------------------------------------------------
def schedules_run_due(now: datetime | None = None) -> list[str]:
    """Run every active schedule whose time has come; what happened, one line per run. Every
    cluster calls it as it heals: each due time is claimed by one of them only."""
    done = []
    due = Schedule.objects.filter(active=True, next_run_at__lte=now or timezone.now())
    for schedule_id in due.values_list("id", flat=True):
        try:
            # The time read afresh for each: a long job start before must not make the next run
            # time of this one come from a past moment (due again at once).
            run = schedule_run_if_due(schedule_id, now or timezone.now())
        except DatabaseError as exc:
            logger.warning("could not run schedule %s (%s)", schedule_id, exc)
            continue
        except Exception:  # a bug must not stop this cluster's healing, nor the other schedules
            logger.exception("schedule %s could not run", schedule_id)
            continue
        if run is not None:
            done.append(f"schedule {run.schedule.name!r}: {run.outcome} {run.message}".rstrip())
    return done


def schedule_run_if_due(schedule_id: int, now: datetime) -> ScheduleRun | None:
    """Claim the schedule's due time and start its job, or skip while its previous job is active,
    or record why the start was refused; None when it was not due (or another cluster took it)."""
    with transaction.atomic():
        # A schedule another cluster is starting (its row locked, maybe for a long job start) is
        # passed over at once instead of holding up this cluster's healing.
        due = Schedule.objects.select_for_update(skip_locked=True, no_key=True)
        schedule = due.filter(id=schedule_id, active=True, next_run_at__lte=now).first()
        if schedule is None:
            return None
        due_at = schedule.next_run_at
        assert due_at is not None  # (next_run_at__lte matched it)
        # The claim: only the first to move next_run_at from the value it read goes on.
        if not Schedule.objects.filter(id=schedule.id, active=True, next_run_at=due_at).update(
            next_run_at=cron_next(schedule.cron, now)
        ):
            return None
        run = ScheduleRun(schedule=schedule, due_at=due_at, ran_at=now)
        previous = Job.objects.filter(schedule=schedule, status__in=Job.ACTIVE).order_by("-id").first()
        if previous is not None:
            run.outcome = ScheduleRun.Outcome.SKIPPED
            run.message = _("job %(id)s is still %(status)s") % {
                "id": previous.id,
                "status": previous.get_status_display(),
            }
        else:
            try:
                with transaction.atomic():
                    job = job_start(**_job_arguments(schedule))
                    if not job.total_items:
                        raise _NobodyToProcess  # undone: no empty job, no event announcing it
                run.job, run.outcome = job, ScheduleRun.Outcome.STARTED
                run.message = _("job %(id)s over %(count)s users") % {"id": job.id, "count": job.total_items}
            except _NobodyToProcess:
                run.outcome = ScheduleRun.Outcome.SKIPPED
                run.message = _("nobody to process: no job started")
            except JobError as exc:
                run.outcome = ScheduleRun.Outcome.REFUSED
                run.message = str(exc)
            except DatabaseError:
                raise  # the database away: this due time is tried again at a later heal
            except Exception as exc:  # a bug: recorded once, not retried (and logged) at every heal
                logger.exception("schedule %s could not start its job", schedule.id)
                run.outcome = ScheduleRun.Outcome.REFUSED
                run.message = _("could not start its job (%(error)s): see the cluster's log") % {
                    "error": type(exc).__name__
                }
        run.save()
    return run


class _NobodyToProcess(Exception):
    """A schedule's job would have no users (none needs extraction, say)."""


def _job_arguments(schedule: Schedule) -> dict[str, Any]:
    listed = schedule.users == Schedule.Users.LIST
    return {
        "user_ids": schedule.user_ids if listed else None,
        "everyone": schedule.users == Schedule.Users.ALL,
        "extractor": schedule.extractor,
        "options": schedule.options,
        "priority": schedule.priority,
        "max_workers": schedule.max_workers,
        "schedule": schedule,
        "created_by": schedule.created_by,
    }
