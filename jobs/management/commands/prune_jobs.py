from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from eventproject.commands import option_within
from jobs.pruning import PRUNE_BATCH_SIZE, jobs_prune

BATCH_SIZE_LIMIT = 100_000


class Command(BaseCommand):
    help = (
        "Delete the items of jobs that finished (completed, cancelled or failed) more than --days days ago, "
        "in batches; the jobs and their counts stay. Safe to run again at any time. Every `qcluster` "
        "does it by itself when JOBS_PRUNE_DAYS is set."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, required=True, help="prune jobs finished more than this ago")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=PRUNE_BATCH_SIZE,
            help=f"items deleted per transaction (default {PRUNE_BATCH_SIZE:,})",
        )
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    def handle(self, *args, days, batch_size, dry_run, **options):
        option_within("--days", days, 1, settings.JOBS_PRUNE_DAYS_LIMIT)
        option_within("--batch-size", batch_size, 1, BATCH_SIZE_LIMIT)
        pruned = jobs_prune(days=days, batch_size=batch_size, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        for job_id, count in pruned.items.items():
            self.stdout.write(f"job {job_id}: {verb} {count:,} items")
        self.stdout.write(
            f"{verb} {pruned.total:,} items of {len(pruned.items)} jobs finished more than {days} days ago"
            + (" (dry run: nothing deleted)" if dry_run else "")
        )
