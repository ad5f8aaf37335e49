from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from tqdm import tqdm

from eventproject.db import tables_analyze
from extraction.models import Behavior, UserProfile
from extraction.sample_data import sample_user, sample_user_id
from extraction.services import behaviors_insert, profiles_upsert

USERS_PER_BATCH = 100


class Command(BaseCommand):
    help = (
        "Generate deterministic car-shopping journeys (~90 behaviours per user) and profiles. "
        "Running it again with the same options adds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, required=True, help="how many users")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--prefix", default="u", help="user id prefix (default 'u': u0000001…)")
        parser.add_argument("--start", type=int, default=1, help="index of the first user (default 1)")

    def handle(self, *args, users, seed, prefix, start, **options):
        if users < 0:
            raise CommandError("--users must be 0 or more")
        if start < 0:
            raise CommandError("--start must be 0 or more")
        if not prefix or len(prefix) > 100:
            raise CommandError("--prefix must be 1 to 100 characters")
        longest = len(sample_user_id(prefix, start + max(users - 1, 0)))
        if longest > settings.USER_ID_MAX_CHARS:
            raise CommandError(
                f"--prefix and --start make user ids of up to {longest} characters; "
                f"at most {settings.USER_ID_MAX_CHARS} (USER_ID_MAX_CHARS)"
            )
        profiles_new = behaviors_new = behaviors_total = 0
        with tqdm(total=users, unit="users", desc="generating", disable=None, leave=False) as bar:
            for first in range(start, start + users, USERS_PER_BATCH):
                batch = [
                    sample_user(index, seed, prefix)
                    for index in range(first, min(first + USERS_PER_BATCH, start + users))
                ]
                rows = [row for u in batch for row in u.behaviors]
                with transaction.atomic():
                    profiles_new += profiles_upsert({u.user_id: u.profile for u in batch})[0]
                    behaviors_new += behaviors_insert(rows)
                behaviors_total += len(rows)
                bar.update(len(batch))
        if behaviors_new:
            tables_analyze(Behavior, UserProfile)
        self.stdout.write(
            f"sample data: {users} users ({profiles_new} new profiles), "
            f"{behaviors_total} behaviours ({behaviors_new} new)"
        )
