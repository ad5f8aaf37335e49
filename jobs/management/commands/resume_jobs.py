from django.core.management.base import BaseCommand

from jobs.services import jobs_resume_stalled


class Command(BaseCommand):
    help = (
        "Re-enqueue drain tasks for every queued or running job that has claimable items and nobody "
        "working on it; finish jobs with nothing left. Safe to run at any time (it also runs every minute "
        "inside the cluster)."
    )

    def handle(self, *args, **options):
        done = jobs_resume_stalled()
        for line in done:
            self.stdout.write(line)
        if not done:
            self.stdout.write("nothing to resume")
