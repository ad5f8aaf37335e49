from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from eventproject.commands import option_within
from extraction.llm_cache import cache_prune
from extraction.models import LLMCacheEntry


class Command(BaseCommand):
    help = (
        "Delete the LLM's cached answers older than --days days. A job resumed or retried later "
        "pays again for the calls whose answers were deleted; nothing else depends on the cache."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, required=True, help="keep the answers of the last DAYS days (0: delete all)"
        )
        parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    def handle(self, *args, days, dry_run, **options):
        option_within("--days", days, 0, settings.JOBS_PRUNE_DAYS_LIMIT)
        before = timezone.now() - timedelta(days=days)
        if dry_run:
            count = LLMCacheEntry.objects.filter(created_at__lt=before).count()
            self.stdout.write(f"would delete {count:,} cached answers made before {before:%Y-%m-%d %H:%M %Z}")
            return
        count = cache_prune(before)
        left = LLMCacheEntry.objects.count()
        self.stdout.write(
            f"deleted {count:,} cached answers made before {before:%Y-%m-%d %H:%M %Z}; {left:,} kept"
        )
