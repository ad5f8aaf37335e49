from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from extraction.extractors import UnknownExtractor, extractor_names, make_extractor
from jobs.console import (
    ProgressReport,
    add_share_arguments,
    follow,
    options_json,
    share_arguments,
    summary_line,
    terminal_safe,
)
from jobs.errors import JobError, JobInvalid
from jobs.models import Job
from jobs.progress import Progress, job_progress
from jobs.selectors import job_estimate
from jobs.services import job_run_here, job_start
from jobs.user_ids import user_ids_read


def read_user_ids(path: Path) -> list[str]:
    """The ids of a --users-file, read as the admin reads an uploaded one."""
    try:
        with path.open("rb") as handle:
            return user_ids_read(handle)
    except OSError as exc:
        raise CommandError(f"--users-file {path}: {exc.strerror}") from exc
    except JobInvalid as exc:
        raise CommandError(f"--users-file {path}: {exc.errors['users_file']}") from None


class Command(BaseCommand):
    help = (
        "Start an extraction job and follow it with a progress bar until it ends (exit status 0 only "
        "when it completed). By default it covers every user needing extraction; --all-users covers "
        "every user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        who = parser.add_mutually_exclusive_group()
        who.add_argument(
            "--all",
            action="store_true",
            help="every user needing extraction (the default; not every user: see --all-users)",
        )
        who.add_argument(
            "--all-users",
            action="store_true",
            help="every user, extracted before or not (a new extractor or model over everyone)",
        )
        who.add_argument("--users", nargs="+", metavar="ID", help="these users")
        who.add_argument(
            "--users-file", type=Path, metavar="PATH", help="users listed in a file, one per line"
        )
        parser.add_argument("--extractor", default="rules", help=f"one of: {', '.join(extractor_names())}")
        parser.add_argument(
            "--options", default="{}", help='extractor options as JSON, e.g. \'{"model": "x"}\''
        )
        parser.add_argument(
            "--chunk-size", type=int, help="users claimed at a time (default: JOBS_CHUNK_SIZE)"
        )
        parser.add_argument("--max-attempts", type=int, help="attempts per user (default: JOBS_MAX_ATTEMPTS)")
        add_share_arguments(parser)
        how = parser.add_mutually_exclusive_group()
        how.add_argument(
            "--estimate", action="store_true", help="print the expected LLM calls and tokens; start nothing"
        )
        how.add_argument("--sync", action="store_true", help="run the job in this process, without a cluster")
        how.add_argument("--detach", action="store_true", help="print the job id and return at once")

    def handle(
        self,
        *args,
        users,
        users_file,
        all_users,
        extractor,
        options,
        chunk_size,
        max_attempts,
        priority,
        max_workers,
        estimate,
        sync,
        detach,
        **rest,
    ):
        options = options_json(options)
        user_ids = users if users else read_user_ids(users_file) if users_file else None
        if users_file and not user_ids:
            raise CommandError(f"--users-file {users_file}: no user ids in it")
        if user_ids and len(user_ids) > settings.JOBS_MAX_USER_IDS:  # counted as the API counts them
            raise CommandError(
                f"{len(user_ids):,} user ids; at most {settings.JOBS_MAX_USER_IDS:,} per job "
                f"(JOBS_MAX_USER_IDS). Split the list, or leave it out for everyone needing extraction."
            )
        if estimate:
            return self._estimate(user_ids, extractor, options, everyone=all_users)
        try:
            job = job_start(
                user_ids=user_ids,
                everyone=all_users,
                enqueue=not sync,
                **share_arguments(priority, max_workers),
                extractor=extractor,
                options=options,
                chunk_size=chunk_size,
                max_attempts=max_attempts,
            )
        except JobError as exc:
            raise CommandError(terminal_safe(str(exc))) from None
        self.stdout.write(f"started job {job.id}: {job.total_items} users, extractor {job.extractor}")
        if detach:
            return
        try:
            progress = self._run_here(job) if sync else follow(job, self.stdout)
        except KeyboardInterrupt:
            raise CommandError(
                f"stopped following; job {job.id} is still {job.status} and continues on any "
                f"`manage.py qcluster` (see `manage.py job_status {job.id}`, stop it with "
                f"`manage.py cancel_job {job.id}`)",
                returncode=130,
            ) from None
        self.stdout.write(summary_line(progress))
        if progress.status != Job.Status.COMPLETED:
            raise CommandError(f"job {job.id} ended {progress.status}")

    def _estimate(self, user_ids, name: str, options: dict, *, everyone: bool) -> None:
        try:
            extractor = make_extractor(name, options)
        except (UnknownExtractor, ValidationError) as exc:
            raise CommandError(terminal_safe(str(exc))) from None
        totals = job_estimate(user_ids=user_ids, extractor=extractor, everyone=everyone)
        self.stdout.write(
            f"estimate for {totals['users']} users with extractor {name}: {totals['calls']} calls, "
            f"about {totals['prompt_tokens']:,} prompt and {totals['completion_tokens']:,} completion tokens "
            f"({totals['reasoning_tokens']:,} of them reasoning, in the share this endpoint and model "
            f"reasoned so far; before cache hits; tokens counted as 1 per 3 bytes of text)"
        )

    def _run_here(self, job: Job) -> Progress:
        report = ProgressReport(job, self.stdout)

        def on_chunk() -> None:
            job.refresh_from_db(fields=["status", "succeeded_items", "failed_items", "cancelled_items"])
            report.update(
                status=job.status,
                succeeded=job.succeeded_items,
                failed=job.failed_items,
                cancelled=job.cancelled_items,
            )

        try:
            job_run_here(job, on_chunk=on_chunk)
            on_chunk()  # the final state, as the job ended
        finally:
            report.close()
        job.refresh_from_db()
        return job_progress(job)
