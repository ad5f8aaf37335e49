from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.errors import JobError
from jobs.models import Job
from jobs.services import job_cancel


class Command(BaseCommand):
    help = "Cancel a job: pending users at once, running chunks finish and keep their work."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)

    def handle(self, *args, job_id, **options):
        job = Job.objects.filter(id=job_id).first()
        if job is None:
            raise CommandError(f"no job {job_id}")
        try:
            job = job_cancel(job)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"job {job.id} is {job.status}")
