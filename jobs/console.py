"""How jobs look in a terminal: the commands (extract, job_status, runall) share these."""

import argparse
import json
import re
import time
from collections.abc import Callable
from typing import TextIO

from django.conf import settings
from django.core.management.base import CommandError, OutputWrapper
from django.utils.timezone import localtime
from tqdm import tqdm

from .models import PRIORITY_NAMES, Job, percent_done
from .progress import Progress, job_progress

POLL_SECONDS = 0.5
NO_WORKER_HINT_AFTER = 15
# Away from a terminal (a log file, CI), a plain progress line at most this often.
PLAIN_EVERY_SECONDS = 5.0
# Where reports go: a stream, or a command's self.stdout.
Out = TextIO | OutputWrapper
# Control characters but the line break: imported user ids and errors may hold terminal escapes.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """The text with its control characters shown as escapes (\\x1b), not run by the terminal."""
    return CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def summary_line(progress: Progress) -> str:
    line = (
        f"job {progress.id} {progress.status}: {progress.succeeded} succeeded, "
        f"{progress.failed} failed, {progress.cancelled} cancelled of {progress.total}, "
        f"{progress.event_count} events"
    )
    if progress.elapsed_seconds is not None:
        line += f", {progress.elapsed_seconds:.1f} s"
    if progress.error:
        line += f"\n  error: {progress.error}"
    for error in progress.top_errors:
        line += f"\n  {error['count']} × {error['error']}"
    return terminal_safe(line)


def describe(progress: Progress) -> str:
    """Every field of a job's progress, one per line."""
    eta = progress.estimated_seconds_remaining
    lines = [
        f"job {progress.id} ({progress.extractor}): {progress.status}",
        f"  progress     {progress.percent:.1f}%  {progress.processed}/{progress.total} processed, "
        f"batch {progress.current_batch}/{progress.total_batches}",
        f"  items        {progress.succeeded} succeeded, {progress.failed} failed, "
        f"{progress.cancelled} cancelled, {progress.running} running, {progress.pending} pending",
        f"  events       {progress.event_count}",
        f"  tokens       {progress.prompt_tokens} prompt, {progress.completion_tokens} completion "
        f"({progress.reasoning_tokens} reasoning)",
        f"  throughput   {progress.throughput_per_second:.1f} users/s"
        + (f", about {eta} s remaining" if eta is not None else ""),
        f"  workers      {progress.activity or '-'}",
        f"  created      {localtime(progress.created_at):%Y-%m-%d %H:%M:%S}",
    ]
    if progress.started_at:
        lines.append(f"  started      {localtime(progress.started_at):%Y-%m-%d %H:%M:%S}")
    if progress.finished_at:
        lines.append(f"  finished     {localtime(progress.finished_at):%Y-%m-%d %H:%M:%S}")
    if progress.elapsed_seconds is not None:
        lines.append(f"  elapsed      {progress.elapsed_seconds:.1f} s")
    if progress.current_user_ids:
        lines.append(f"  now          {', '.join(progress.current_user_ids)}")
    if llm := progress.llm:
        lines.append(
            f"  llm          {llm['model']} at {llm['endpoint']}, answers as {llm['response_format']}"
        )
        for adapted in llm["adapted"]:
            instead = f"sends {adapted['instead']} instead" if adapted["instead"] else "sends nothing instead"
            lines.append(f"  adapted      refused {adapted['refused']}: {instead}")
    if progress.error:
        lines.append(f"  error        {progress.error}")
    for error in progress.top_errors:
        lines.append(f"  {error['count']:>6} × {error['error']}")
    return terminal_safe("\n".join(lines))


def add_share_arguments(parser) -> None:
    """--priority and --max-workers, for the commands that start a job or change its share."""
    parser.add_argument(
        "--priority",
        choices=list(PRIORITY_NAMES),
        help="its share of the workers beside other running jobs (default normal; high gets twice the "
        "workers' time of normal)",
    )
    parser.add_argument(
        "--max-workers",
        type=workers_cap,
        metavar="N",
        help="the most workers it may hold at once (0: no cap)",
    )


def options_json(text: str) -> dict:
    """--options as the commands take it: a JSON object (CommandError saying what it is not)."""
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise CommandError(
            terminal_safe(f'--options must be a JSON object, like {{"model": "gpt-4o-mini"}}, not {text}')
        )
    return options


def workers_cap(text: str) -> int:
    """--max-workers as a command takes it: 0 for no cap (a command has no empty value)."""
    limit = settings.JOBS_MAX_WORKERS_LIMIT
    if not (text.isascii() and text.isdigit() and int(text) <= limit):
        raise argparse.ArgumentTypeError(
            f"must be 0 (no cap) or a whole number from 1 to {limit}, not {text!r}"
        )
    return int(text)


def share_arguments(priority: str | None, max_workers: int | None) -> dict:
    """The options of add_share_arguments as job_start and job_share_set take them."""
    values: dict[str, int | None] = {}
    if priority is not None:
        values["priority"] = PRIORITY_NAMES[priority]
    if max_workers is not None:
        values["max_workers"] = max_workers or None
    return values


class ProgressReport:
    """A job's progress told as one story, on a terminal or in a log.

    The count is of users *finished*: succeeded, failed or cancelled, and the figures beside it
    (ok, failed, cancelled) add up to it, so a full bar never sits beside a smaller ok= count
    without saying where the rest went; the percentage is the job's own (users processed, as on
    every screen). On a terminal it is a live bar; elsewhere (a log file,
    CI) a plain line every `every` seconds, when the status changes, and at the end, instead of
    a redraw per update that would fill the log with carriage returns.
    """

    def __init__(
        self,
        job: Job,
        out: Out,
        *,
        interactive: bool | None = None,
        every: float = PLAIN_EVERY_SECONDS,
        clock=time.monotonic,
    ):
        self.job_id, self.total, self.out = job.id, job.total_items, out
        self.interactive = _is_terminal(out) if interactive is None else interactive
        self.every, self.clock = every, clock
        self.last_line = ""
        self.last_printed_at: float | None = None
        self.last_status: str | None = None
        self.bar = (
            tqdm(total=job.total_items, unit="users", desc=f"job {job.id}", file=out, dynamic_ncols=True)
            if self.interactive
            else None
        )

    def update(self, *, status: str, succeeded: int, failed: int, cancelled: int) -> None:
        finished = succeeded + failed + cancelled
        if self.bar is not None:
            self.bar.update(finished - self.bar.n)
            self.bar.set_postfix_str(f"ok={succeeded}, failed={failed}, cancelled={cancelled}, {status}")
            return
        percent = percent_done(succeeded + failed, self.total)
        line = (
            f"job {self.job_id} {status}: {finished:,}/{self.total:,} users finished: "
            f"ok={succeeded:,} failed={failed:,} cancelled={cancelled:,} ({percent:.1f} % processed)"
        )
        now = self.clock()
        due = self.last_printed_at is None or now - self.last_printed_at >= self.every
        if line != self.last_line and (due or status != self.last_status or status in Job.FINISHED):
            self.out.write(line + "\n")
            self.last_line, self.last_printed_at = line, now
        self.last_status = status

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.out.write(text + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(out: Out) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def follow(job: Job, out: Out, *, each_poll: Callable[[], None] | None = None, **report_options) -> Progress:
    """Report the job's progress (see ProgressReport) until it finishes; returns its final progress.
    `each_poll` is called at each poll (it may raise to stop following: a child process died).

    KeyboardInterrupt stops following, not the job.
    """
    started = time.monotonic()
    hinted = False
    report = ProgressReport(job, out, **report_options)
    try:
        while True:
            job.refresh_from_db()
            progress = job_progress(job)
            report.update(
                status=progress.status,
                succeeded=progress.succeeded,
                failed=progress.failed,
                cancelled=progress.cancelled,
            )
            if job.status in Job.FINISHED:
                return progress
            if (
                not hinted
                and job.status == Job.Status.QUEUED
                and time.monotonic() - started > NO_WORKER_HINT_AFTER
            ):
                report.note("no worker has picked the job up yet: is `python manage.py qcluster` running?")
                hinted = True
            if each_poll:
                each_poll()
            time.sleep(POLL_SECONDS)
    finally:
        report.close()
