from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.console import add_share_arguments, share_arguments
from jobs.errors import JobError
from jobs.models import Job
from jobs.services import job_share_set


class Command(BaseCommand):
    help = (
        "Change a job's share of the workers: its priority and the most workers it may hold. It takes "
        "effect at every worker's next chunk, also while the job runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        add_share_arguments(parser)

    def handle(self, *args, job_id, priority, max_workers, **options):
        job = Job.objects.filter(id=job_id).first()
        if job is None:
            raise CommandError(f"no job {job_id}")
        changes = share_arguments(priority, max_workers)
        if not changes:
            raise CommandError("say what to change: --priority, --max-workers (0: no cap), or both")
        try:
            job = job_share_set(job, **changes)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        cap = f"at most {job.max_workers} workers" if job.max_workers else "no cap on its workers"
        self.stdout.write(f"job {job.id}: priority {job.get_priority_display()}, {cap}")
