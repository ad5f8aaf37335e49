from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.console import terminal_safe
from jobs.errors import JobError
from jobs.models import Job
from jobs.services import job_resume


class Command(BaseCommand):
    help = (
        "Resume a cancelled or failed job (its cancelled users go back to work), or ring a queued or "
        "running one again. A job its token cap stopped needs --max-total-tokens above what it spent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument(
            "--max-total-tokens", type=int, metavar="N", help="a new token cap (options.max_total_tokens)"
        )

    def handle(self, *args, job_id, max_total_tokens, **options):
        job = Job.objects.filter(id=job_id).first()
        if job is None:
            raise CommandError(f"no job {job_id}")
        try:
            job = job_resume(job, max_total_tokens=max_total_tokens)
        except JobError as exc:
            raise CommandError(terminal_safe(str(exc))) from None
        self.stdout.write(f"job {job.id} is {job.status}")
