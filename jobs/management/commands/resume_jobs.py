from django.core.management.base import BaseCommand

from eventproject.work import tasks_waiting
from jobs.healing import heal_all


class Command(BaseCommand):
    help = (
        "Heal every job now: ring drain tasks for queued or running jobs with work and fewer live drains "
        "than JOBS_DRAIN_TASKS, finish jobs with nothing left, cancel items that stopped jobs still hold; "
        "ring imports nobody is working on. "
        "Safe to run at any time; every running `qcluster` does it when it starts and every few seconds."
    )

    def handle(self, *args, **options):
        done = heal_all(force=True)
        for line in done:
            self.stdout.write(line)
        if done:
            return
        if waiting := tasks_waiting():  # healing rings no drains then: no worker anywhere is free
            wait = "task waits" if waiting == 1 else "tasks wait"
            self.stdout.write(
                f"{waiting} {wait} in the queue for a free worker: no more rung "
                "(jobs are served as workers come free)"
            )
        else:
            self.stdout.write("every job is healthy: nothing to do")
