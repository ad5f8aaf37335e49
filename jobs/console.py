"""How jobs look in a terminal: the commands (extract, job_status, runall) share these."""

import time
from typing import Any, TextIO

from django.utils.timezone import localtime
from tqdm import tqdm

from .models import Job
from .selectors import job_progress

POLL_SECONDS = 0.5
NO_WORKER_HINT_AFTER = 15


def summary_line(progress: dict[str, Any]) -> str:
    line = (
        f"job {progress['id']} {progress['status']}: {progress['succeeded']} succeeded, "
        f"{progress['failed']} failed, {progress['cancelled']} cancelled of {progress['total']}, "
        f"{progress['event_count']} events"
    )
    if progress["elapsed_seconds"] is not None:
        line += f", {progress['elapsed_seconds']:.1f} s"
    if progress["error"]:
        line += f"\n  error: {progress['error']}"
    for error in progress["top_errors"]:
        line += f"\n  {error['count']} × {error['error']}"
    return line


def describe(progress: dict[str, Any]) -> str:
    """Every field of a job's progress, one per line."""
    eta = progress["estimated_seconds_remaining"]
    lines = [
        f"job {progress['id']} ({progress['extractor']}): {progress['status']}",
        f"  progress     {progress['percent']:.1f}%  {progress['processed']}/{progress['total']} processed, "
        f"batch {progress['current_batch']}/{progress['total_batches']}",
        f"  items        {progress['succeeded']} succeeded, {progress['failed']} failed, "
        f"{progress['cancelled']} cancelled, {progress['running']} running, {progress['pending']} pending",
        f"  events       {progress['event_count']}",
        f"  tokens       {progress['prompt_tokens']} prompt, {progress['completion_tokens']} completion",
        f"  throughput   {progress['throughput_per_second']:.1f} users/s"
        + (f", about {eta} s remaining" if eta is not None else ""),
        f"  created      {localtime(progress['created_at']):%Y-%m-%d %H:%M:%S}",
    ]
    if progress["started_at"]:
        lines.append(f"  started      {localtime(progress['started_at']):%Y-%m-%d %H:%M:%S}")
    if progress["finished_at"]:
        lines.append(f"  finished     {localtime(progress['finished_at']):%Y-%m-%d %H:%M:%S}")
    if progress["elapsed_seconds"] is not None:
        lines.append(f"  elapsed      {progress['elapsed_seconds']:.1f} s")
    if progress["current_user_ids"]:
        lines.append(f"  now          {', '.join(progress['current_user_ids'])}")
    if progress["error"]:
        lines.append(f"  error        {progress['error']}")
    for error in progress["top_errors"]:
        lines.append(f"  {error['count']:>6} × {error['error']}")
    return "\n".join(lines)


def follow(job: Job, out: TextIO) -> dict[str, Any]:
    """Show a live progress bar until the job finishes; returns its final progress.

    KeyboardInterrupt stops following, not the job.
    """
    started = time.monotonic()
    hinted = False
    with tqdm(total=job.total_items, unit="users", desc=f"job {job.id}", file=out, dynamic_ncols=True) as bar:
        while True:
            job.refresh_from_db()
            progress = job_progress(job)
            bar.update(progress["processed"] + progress["cancelled"] - bar.n)
            bar.set_postfix(ok=progress["succeeded"], failed=progress["failed"], status=progress["status"])
            if job.status in Job.FINISHED:
                return progress
            if (
                not hinted
                and job.status == Job.Status.QUEUED
                and time.monotonic() - started > NO_WORKER_HINT_AFTER
            ):
                bar.write("no worker has picked the job up yet: is `python manage.py qcluster` running?")
                hinted = True
            time.sleep(POLL_SECONDS)
