from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from eventproject.commands import option_within
from jobs.console import options_json, terminal_safe, workers_cap
from jobs.errors import JobInvalid
from jobs.models import Job, Schedule
from jobs.schedules import (
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedule_resume,
    schedule_update,
)

from .extract import read_user_ids

RUNS_MOST = 10_000  # `schedule runs --limit`

PRIORITIES = {name.name.lower(): name.value for name in Job.Priority}


class Command(BaseCommand):
    help = (
        "Schedules that start extraction jobs at the times a cron expression names (in TIME_ZONE): "
        "list, add, set, pause, resume, delete them, or show their runs. Every running qcluster "
        "starts the jobs of due schedules."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="every schedule with its next run and its last outcome")
        add = actions.add_parser("add", help="a new schedule")
        add.add_argument("name")
        add.add_argument("--cron", required=True, help="e.g. '0 3 * * *' (every day at 03:00)")
        self._what(add)
        add.add_argument("--paused", action="store_true", help="make it paused")
        change = actions.add_parser("set", help="change a schedule (only what is given)")
        change.add_argument("name")
        change.add_argument("--cron")
        self._what(change)
        for name, text in (
            ("pause", "pause a schedule"),
            ("resume", "resume a paused schedule"),
            ("delete", "delete a schedule and its runs (its jobs stay)"),
        ):
            actions.add_parser(name, help=text).add_argument("name")
        runs = actions.add_parser("runs", help="a schedule's latest runs")
        runs.add_argument("name")
        runs.add_argument(
            "--limit", type=int, default=20, help=f"runs listed (default 20, at most {RUNS_MOST:,})"
        )

    def _what(self, parser: CommandParser) -> None:
        who = parser.add_mutually_exclusive_group()
        who.add_argument("--needing", action="store_true", help="users needing extraction (the default)")
        who.add_argument("--all-users", action="store_true", help="every user")
        who.add_argument("--users", nargs="+", metavar="ID", help="these users")
        who.add_argument("--users-file", type=Path, metavar="PATH", help="users listed in a file, one a line")
        parser.add_argument("--extractor")
        parser.add_argument("--options", help="extractor options as JSON")
        parser.add_argument("--priority", choices=list(PRIORITIES))
        parser.add_argument(
            "--max-workers",
            type=workers_cap,
            metavar="N",
            help="the most workers its jobs may hold (0: no cap)",
        )

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action}")(**options)
        except JobInvalid as exc:
            named = (f"{_option_of(field)}: {text}" for field, text in exc.errors.items())
            raise CommandError("; ".join(named)) from None

    def do_list(self, **options):
        schedules = Schedule.objects.order_by("name")
        if not schedules:
            self.stdout.write("no schedules")
        for schedule in schedules:
            last = schedule.runs.select_related("job").first()
            outcome = "never ran" if last is None else f"last: {last.outcome} {last.message}".rstrip()
            next_run = _when(schedule.next_run_at) if schedule.active else "paused"
            line = (
                f"{schedule.name}: {schedule.cron} ({settings.TIME_ZONE}) {schedule.users} "
                f"{schedule.extractor}; next {next_run}; {outcome}"
            )
            self.stdout.write(terminal_safe(line))  # names saved before they were checked, errors

    def do_add(self, *, name, cron, paused, **options):
        schedule = schedule_create(name=name, cron=cron, active=not paused, **self._values(options))
        self.stdout.write(f"schedule {schedule.name!r} added; next run {_when(schedule.next_run_at)}")

    def do_set(self, *, name, cron, **options):
        values = self._values(options)
        if cron is not None:
            values["cron"] = cron
        schedule = schedule_update(self._get(name), **values)
        self.stdout.write(f"schedule {schedule.name!r} changed; next run {_when(schedule.next_run_at)}")

    def do_pause(self, *, name, **options):
        schedule_pause(self._get(name))
        self.stdout.write(f"schedule {name!r} paused")

    def do_resume(self, *, name, **options):
        schedule = schedule_resume(self._get(name))
        self.stdout.write(f"schedule {name!r} resumed; next run {_when(schedule.next_run_at)}")

    def do_delete(self, *, name, **options):
        schedule_delete(self._get(name))
        self.stdout.write(f"schedule {name!r} deleted")

    def do_runs(self, *, name, limit, **options):
        option_within("--limit", limit, 1, RUNS_MOST)
        runs = self._get(name).runs.select_related("job").order_by("-id")[:limit]
        if not runs:
            self.stdout.write("no runs yet")
        for run in runs:
            job = f"job {run.job_id} {run.job.status}" if run.job else "no job"
            self.stdout.write(
                terminal_safe(f"{_when(run.due_at)}  {run.outcome}  {job}  {run.message}".rstrip())
            )

    def _get(self, name: str) -> Schedule:
        schedule = Schedule.objects.filter(name=name).first()
        if schedule is None:
            raise CommandError(f"no schedule named {name!r}")
        return schedule

    def _values(self, options: dict) -> dict:
        """The schedule fields the options give (only those given)."""
        values: dict[str, Any] = {}
        if options.get("all_users"):
            values.update(users=Schedule.Users.ALL, user_ids=[])
        elif options.get("needing"):
            values.update(users=Schedule.Users.NEEDING_EXTRACTION, user_ids=[])
        elif options.get("users") or options.get("users_file"):
            ids = options["users"] or read_user_ids(options["users_file"])
            values.update(users=Schedule.Users.LIST, user_ids=ids)
        if options.get("extractor"):
            values["extractor"] = options["extractor"]
        if options.get("options") is not None:
            values["options"] = options_json(options["options"])
        if options.get("priority"):
            values["priority"] = PRIORITIES[options["priority"]]
        if options.get("max_workers") is not None:
            values["max_workers"] = options["max_workers"] or None
        return values


def _option_of(field: str) -> str:
    """The command-line option that gives a schedule's field (`options.model`: a key of --options)."""
    if field.startswith("options."):
        return f"--options {field.removeprefix('options.')!r}"
    return {"name": "name", "user_ids": "--users", "active": "--paused"}.get(
        field, f"--{field.replace('_', '-')}"
    )


def _when(moment) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}" if moment else "none"
