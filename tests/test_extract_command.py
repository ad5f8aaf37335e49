import io

import pytest
from django.core.management.base import CommandError

from extraction.models import ExtractedEvent
from jobs.console import ProgressReport, follow
from jobs.models import Job

pytestmark = pytest.mark.django_db


def test_sync_runs_everyone_needing_extraction_in_this_process(run, make_users):
    make_users(5)
    out, _ = run("extract", "--sync", "--chunk-size", "2")
    job = Job.objects.get()
    assert f"started job {job.id}: 5 users, extractor rules" in out
    assert f"job {job.id} completed: 5 succeeded, 0 failed, 0 cancelled of 5, 10 events" in out
    assert (job.status, job.chunk_size) == ("completed", 2)
    assert ExtractedEvent.objects.count() == 10


def test_sync_with_nothing_to_do_completes_an_empty_job(run):
    out, _ = run("extract", "--sync")
    assert "0 users" in out and "completed: 0 succeeded" in out


def test_all_users_extracts_everyone_again_where_all_means_those_needing_it(run, make_users):
    """Every user could be started only through a schedule or a list of ids (a million users: no
    list): `--all` means those needing extraction, which after a first run is nobody."""
    make_users(3)
    run("extract", "--sync")
    assert ": 0 users, extractor rules" in run("extract", "--sync", "--all")[0]
    assert "estimate for 3 users" in run("extract", "--all-users", "--estimate")[0]
    out, _ = run("extract", "--sync", "--all-users")
    job = Job.objects.latest("id")
    assert f"started job {job.id}: 3 users" in out and "completed: 3 succeeded" in out
    assert job.selection == {"mode": "all"}
    with pytest.raises(CommandError, match="--users: not allowed with argument --all-users"):
        run("extract", "--all-users", "--users", "u001")


def test_it_takes_users_from_the_command_line_or_a_file(run, make_users, write_file):
    make_users(4)
    run("extract", "--sync", "--users", "u001", "u003")
    assert sorted(Job.objects.get().items.values_list("user_id", flat=True)) == ["u001", "u003"]
    path = write_file("ids.txt", "\ufeffuser_id\r\nu002\r\n\r\n# the rest\r\nu004\r\n")
    run(
        "extract",
        "--sync",
        "--users-file",
        str(path),
        "--extractor",
        "test",
        "--options",
        '{"error": "x"}',
        "--max-attempts",
        "1",
    )
    job = Job.objects.latest("id")
    assert sorted(job.items.values_list("user_id", flat=True)) == ["u002", "u004"]
    assert (job.extractor, job.options["error"], job.failed_items) == ("test", "x", 2)


def test_detach_only_starts_the_job(run, make_users):
    make_users(2)
    out, _ = run("extract", "--detach")
    job = Job.objects.get()
    assert out.strip() == f"started job {job.id}: 2 users, extractor rules"
    assert job.status == "queued"


def test_a_job_that_does_not_complete_exits_with_an_error(run, make_users):
    make_users(2)
    with pytest.raises(CommandError, match=r"job \d+ ended failed"):
        run("extract", "--sync", "--extractor", "test", "--options", '{"fatal": "no key"}')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "ghost"], "user_ids: unknown users: ghost"),
        (["--extractor", "magic"], "extractor: unknown extractor 'magic'"),
        (["--options", "{nope"], "--options is not valid JSON"),
        (["--options", "0"], r"--options must be a JSON object, like \{\"model\": \"gpt-4o-mini\"\}, not 0"),
        (["--options", "null"], "--options must be a JSON object"),
        (["--options", '{"x": 1}'], "options.x: unknown option"),
        (["--chunk-size", "0"], "chunk_size: must be an integer from 1 to 10000"),
        (["--users-file", "/no/such/file"], "--users-file /no/such/file"),
    ],
)
def test_bad_options_are_refused_by_name(run, make_users, args, message):
    make_users(1)
    with pytest.raises(CommandError, match=message):
        run("extract", "--sync", *args)
    assert not Job.objects.exists()


def test_users_already_in_a_job_are_named(run, make_users):
    make_users(2)
    run("extract", "--detach")
    job = Job.objects.get()
    with pytest.raises(
        CommandError, match=rf"2 users are already in an active job \(u001, u002; job {job.id}\)"
    ):
        run("extract", "--users", "u001", "u002")


def test_job_status_shows_a_table_or_one_job(run, make_users):
    make_users(3)
    run("extract", "--sync")
    job = Job.objects.get()
    out, _ = run("job_status")
    assert f"{job.id:>6}  completed   rules" in out and "3/3 100%" in out
    out, _ = run("job_status", str(job.id))
    assert f"job {job.id} (rules): completed" in out
    assert "3 succeeded, 0 failed, 0 cancelled, 0 running, 0 pending" in out
    with pytest.raises(CommandError, match="no job 999"):
        run("job_status", "999")
    for limit in ("0", "10001", "99999999999999999999"):  # the last one: bigint out of range
        with pytest.raises(CommandError, match=f"--limit must be from 1 to 10,000, got {limit}"):
            run("job_status", "--limit", limit)


def test_job_status_reconcile_fixes_drifted_counters(run, make_users):
    make_users(2)
    run("extract", "--sync")
    job = Job.objects.get()
    Job.objects.filter(id=job.id).update(succeeded_items=0)
    out, _ = run("job_status", str(job.id), "--reconcile")
    assert "fixed succeeded_items: 0 -> 2" in out


def test_resume_jobs_heals_every_job_and_says_what_it_did(run, make_users):
    out, _ = run("resume_jobs")
    assert out.strip() == "every job is healthy: nothing to do"
    make_users(1)
    run("extract", "--detach")
    out, _ = run("resume_jobs")  # rings at once, however recently the job was rung
    assert out.strip() == f"job {Job.objects.get().id}: 0 live drains, rang 4 more"


def test_resume_jobs_says_so_when_it_rings_nothing_because_tasks_wait(
    run, make_users, django_capture_on_commit_callbacks
):
    """It said "every job is healthy: nothing to do" of a job whose drains wait in the queue."""
    make_users(1)
    run("extract", "--detach")
    with django_capture_on_commit_callbacks(execute=True):
        assert run("resume_jobs")[0].strip() == f"job {Job.objects.get().id}: 0 live drains, rang 4 more"
    out, _ = run("resume_jobs")  # those 4 drain tasks wait in the queue: no cluster runs here
    assert out.strip() == (
        "4 tasks wait in the queue for a free worker: no more rung (jobs are served as workers come free)"
    )


def test_cancel_job(run, make_users):
    make_users(2)
    run("extract", "--detach")
    job = Job.objects.get()
    out, _ = run("cancel_job", str(job.id))
    assert out.strip() == f"job {job.id} is cancelled"
    with pytest.raises(CommandError, match="only queued or running jobs can be cancelled"):
        run("cancel_job", str(job.id))


def test_it_counts_user_ids_as_the_api_does(run, make_users, write_file, settings):
    settings.JOBS_MAX_USER_IDS = 2
    make_users(2)
    with pytest.raises(CommandError, match=r"More than 2 user ids \(3 so far\): at most 2 per job"):
        run("extract", "--users-file", write_file("ids.txt", "u001\nu002\nu001\n"), "--detach")
    with pytest.raises(CommandError, match="3 user ids; at most 2 per job"):
        run("extract", "--users", "u001", "u002", "u001", "--detach")


def finished_job(make_users, *, succeeded: int, failed: int, cancelled: int) -> Job:
    """A finished job whose counters say so (the report reads counters, not items)."""
    from jobs.services import job_start

    total = succeeded + failed + cancelled
    job = job_start(user_ids=make_users(total), enqueue=False)
    Job.objects.filter(id=job.id).update(
        status="completed", succeeded_items=succeeded, failed_items=failed, cancelled_items=cancelled
    )
    job.refresh_from_db()
    return job


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_and_its_counts_tell_one_story_on_a_terminal(make_users):
    job = finished_job(make_users, succeeded=7, failed=2, cancelled=1)
    out = Terminal()
    follow(job, out)
    last = out.getvalue().split("\r")[-1]
    # Full bar: 10 users finished, and the counts beside it add up to those 10.
    assert "10/10" in last and "ok=7, failed=2, cancelled=1" in last, last


def test_away_from_a_terminal_it_prints_plain_lines_not_redraws(run, make_users):
    make_users(5)
    out, _ = run("extract", "--sync", "--chunk-size", "2")
    assert "\r" not in out and "\x1b" not in out
    job = Job.objects.get()
    assert (
        f"job {job.id} completed: 5/5 users finished: ok=5 failed=0 cancelled=0 (100.0 % processed)\n" in out
    )


def test_away_from_a_terminal_a_line_comes_every_few_seconds_not_per_update(make_users):
    job = finished_job(make_users, succeeded=0, failed=0, cancelled=1)
    Job.objects.filter(id=job.id).update(total_items=100, cancelled_items=0)
    job.refresh_from_db()
    now = [0.0]
    out = io.StringIO()
    report = ProgressReport(job, out, every=5, clock=lambda: now[0])
    for step in range(1, 21):  # an update every half second for ten seconds
        now[0] = step * 0.5
        report.update(status="running", succeeded=step, failed=0, cancelled=0)
    report.update(status="completed", succeeded=20, failed=0, cancelled=0)
    # The first line, one 5 s later, and the last.
    assert out.getvalue().splitlines() == [
        f"job {job.id} running: 1/100 users finished: ok=1 failed=0 cancelled=0 (1.0 % processed)",
        f"job {job.id} running: 11/100 users finished: ok=11 failed=0 cancelled=0 (11.0 % processed)",
        f"job {job.id} completed: 20/100 users finished: ok=20 failed=0 cancelled=0 (20.0 % processed)",
    ]


def test_job_status_shows_control_characters_of_imported_ids_as_escapes_not_to_the_terminal(run):
    """Imports keep control characters other than NUL in user ids: a terminal must not run them."""
    from datetime import UTC, datetime

    from extraction.extractors import BehaviorRecord
    from extraction.services import behaviors_insert
    from jobs.services import job_start
    from jobs.transitions import job_mark_running
    from jobs.worker.claims import chunk_claim

    hostile = "\x1b]0;PWNED\x07\x1b[2Ku9"  # sets the terminal's title, erases the line
    behaviors_insert([BehaviorRecord(hostile, "purchase", datetime(2026, 1, 1, tzinfo=UTC), item="X9")])
    job = job_start(user_ids=[hostile], enqueue=False)
    job_mark_running(job.id)
    chunk_claim(Job.objects.get(id=job.id))
    out, _ = run("job_status", str(job.id))
    assert "\x1b" not in out and "\x07" not in out
    assert "now          \\x1b]0;PWNED\\x07\\x1b[2Ku9" in out


def test_user_ids_the_database_cannot_store_are_refused_naming_them(run, make_users, api):
    """A non-UTF-8 byte in a command's argument reaches Python as a lone surrogate: it was a traceback
    (UnicodeEncodeError, or PostgreSQL's DataError), and a schedule saved with one failed every run."""
    make_users(1)
    with pytest.raises(CommandError, match=r"^user_ids: item 1: unpaired surrogate characters"):
        run("extract", "--users", "u001", "ab\udcff", "--detach")
    with pytest.raises(CommandError, match=r"^--users: item 0: unpaired surrogate characters"):
        run("schedule", "add", "nightly", "--cron", "0 3 * * *", "--users", "ab\udcff")
    assert not Job.objects.exists()


def test_a_users_file_line_is_read_only_so_far(run, tmp_path):
    """A file of one 300 MB line was read whole into memory before its length was checked."""
    path = tmp_path / "ids.txt"
    path.write_bytes(b"u001\n" + b"x" * 5_000_000 + b"\nu002\n")
    with pytest.raises(CommandError, match=r"ids.txt: Line 2 is longer than 2,048 bytes"):
        run("extract", "--users-file", str(path), "--detach")
    path.write_bytes(b" " * 2_000 + b"x" * 48 + b"\r\n")  # 2,048 bytes and its line end: read whole
    with pytest.raises(CommandError, match=r"^user_ids: unknown users: x{48}$"):
        run("extract", "--users-file", str(path), "--detach")


def test_refusals_show_stored_user_ids_escaped(run, make_users):
    """A user id holding a terminal escape came back raw in the error (the screen cleared)."""
    with pytest.raises(CommandError) as refused:
        run("extract", "--users", "\x1b[2Jnope", "--detach")
    assert "\x1b" not in str(refused.value) and "\\x1b[2Jnope" in str(refused.value)
