import contextlib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from eventproject.db import tables_analyze
from extraction.importers import ImportFileError, ImportOptions, error_line, import_file
from extraction.models import Behavior, UserProfile

PROGRESS_MIN_BYTES = 5_000_000


class Command(BaseCommand):
    help = (
        "Import behaviours or user profiles from a CSV or JSON Lines file (optionally .gz). "
        "Bad rows are reported with their line number and skipped; re-importing adds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=["behaviors", "profiles"])
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name")
        parser.add_argument("--encoding", default="utf-8-sig", help="default: UTF-8, with or without BOM")
        parser.add_argument(
            "--timezone",
            default=settings.TIME_ZONE,
            help="zone of timestamps without an offset (default: %(default)s)",
        )
        parser.add_argument("--strict", action="store_true", help="import nothing if any row is bad")
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--show-errors", type=int, default=20, help="rejected rows to print (default 20)")

    def handle(
        self, *args, kind, path, format, encoding, timezone, strict, batch_size, show_errors, **options
    ):
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CommandError(f"--timezone: unknown time zone {timezone!r}") from None
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if show_errors < 0:
            raise CommandError("--show-errors must be 0 or more")
        if path.is_dir():
            raise CommandError(f"{path}: a folder, not a file")
        if not path.exists():
            raise CommandError(f"{path}: no such file")
        shown = 0

        def on_error(line: int, reason: str) -> None:
            nonlocal shown
            if shown < show_errors:
                self.stderr.write(error_line(str(path), line, reason))
            shown += 1

        size = path.stat().st_size
        with tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"importing {kind}",
            disable=None if size >= PROGRESS_MIN_BYTES else True,
            leave=False,
        ) as bar:

            def on_progress(position: int) -> None:
                bar.update(position - bar.n)

            try:
                options = ImportOptions(
                    fmt=format, encoding=encoding, tz=tz, strict=strict, batch_size=batch_size
                )
                summary = import_file(kind, path, options, on_error=on_error, on_progress=on_progress)
            except (ImportFileError, LookupError) as exc:
                raise CommandError(str(exc)) from exc
            except KeyboardInterrupt:
                raise CommandError(
                    "interrupted: the batches committed so far stay imported (all or none with "
                    "--strict); importing the file again adds only what is missing",
                    returncode=130,
                ) from None
        if summary.imported or summary.updated:
            with contextlib.suppress(KeyboardInterrupt):  # the rows are in; the statistics can wait
                tables_analyze(Behavior, UserProfile)
        if shown > show_errors:
            self.stderr.write(f"… and {shown - show_errors} more rejected rows")
        self.stdout.write(summary.text(kind))
        if not summary.committed:
            raise CommandError(f"--strict: {summary.rejected} bad rows, nothing was imported")
