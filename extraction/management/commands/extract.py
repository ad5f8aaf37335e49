from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from extraction.extractors import ExtractionError, make_extractor
from extraction.selectors import users_needing_extraction
from extraction.services import chunk_extract, extraction_results_save


class Command(BaseCommand):
    help = "Extract events, in this process, for every user needing extraction."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--extractor", default="rules")
        parser.add_argument("--chunk-size", type=int, default=200)

    def handle(self, *args, extractor, chunk_size, **options):
        extractor = make_extractor(extractor)
        user_ids = list(users_needing_extraction().order_by("user_id").values_list("user_id", flat=True))
        succeeded = failed = events = 0
        with tqdm(total=len(user_ids), unit="users", desc="extracting", disable=None) as bar:
            for start in range(0, len(user_ids), chunk_size):
                outcomes = chunk_extract(user_ids=user_ids[start : start + chunk_size], extractor=extractor)
                extraction_results_save(outcomes=outcomes, extractor=extractor)
                for _, result in outcomes:
                    if isinstance(result, ExtractionError):
                        failed += 1
                    else:
                        succeeded += 1
                        events += len(result)
                bar.update(len(outcomes))
        self.stdout.write(f"extracted {succeeded} users ({events} events), {failed} failed")
