from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.timezone import localtime

from eventproject.commands import option_within
from jobs.console import describe
from jobs.errors import JobStateError
from jobs.models import Job
from jobs.progress import job_progress
from jobs.services import job_counters_reconcile

LIMIT_MOST = 10_000  # rows of the table


class Command(BaseCommand):
    help = "Show one job's progress, or a table of recent jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", nargs="?", type=int)
        parser.add_argument(
            "--limit", type=int, default=20, help=f"jobs in the table (default 20, at most {LIMIT_MOST:,})"
        )
        parser.add_argument(
            "--reconcile", action="store_true", help="recount the job's counters from its items first"
        )

    def handle(self, *args, job_id, limit, reconcile, **options):
        if job_id is None:
            if reconcile:
                raise CommandError("--reconcile needs a job id")
            return self._table(limit)
        job = Job.objects.filter(id=job_id).first()
        if job is None:
            raise CommandError(f"no job {job_id}")
        if reconcile:
            try:
                fixed = job_counters_reconcile(job.id)
            except JobStateError as exc:
                raise CommandError(str(exc)) from None
            for name, (was, now) in fixed.items():
                self.stdout.write(f"fixed {name}: {was} -> {now}")
            job.refresh_from_db()
        self.stdout.write(describe(job_progress(job)))

    def _table(self, limit: int) -> None:
        option_within("--limit", limit, 1, LIMIT_MOST)
        jobs = Job.objects.order_by("-id")[:limit]
        if not jobs:
            self.stdout.write("no jobs yet")
            return
        self.stdout.write(
            f"{'id':>6}  {'status':<10}  {'extractor':<9}  {'progress':>16}  {'succeeded':>9}  "
            f"{'failed':>7}  {'created':<19}"
        )
        for job in jobs:
            progress = f"{job.processed_items}/{job.total_items} {job.percent:.0f}%"
            self.stdout.write(
                f"{job.id:>6}  {job.status:<10}  {job.extractor:<9}  "
                f"{progress:>16}  {job.succeeded_items:>9}  "
                f"{job.failed_items:>7}  {localtime(job.created_at):%Y-%m-%d %H:%M:%S}"
            )
