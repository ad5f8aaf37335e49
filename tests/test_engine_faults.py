"""The engine under faults, driven directly: each test tries to break one promise of the failure
model (docs/architecture.md) the way a crash, a race or a hostile setting would."""

import sqlite3
import threading
import time
import uuid
from datetime import timedelta

import pytest
import time_machine
from django import db
from django.db import connection, transaction
from django.utils import timezone
from django_q.models import OrmQ

from eventproject.db import DatabaseNow, database_now
from extraction import services
from extraction.extractors import ExtractionError, make_extractor
from extraction.models import ExtractedEvent
from extraction.services import Outcome
from jobs.errors import JobConflict, JobError, JobInvalid
from jobs.healing import jobs_heal
from jobs.models import Drain, Job, JobItem
from jobs.services import job_cancel, job_counters_reconcile, job_resume, job_start
from jobs.transitions import items_stopped_sweep, job_fail, job_finish_if_done, job_reopen
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim
from jobs.worker.commit import chunk_commit, retry_backoff_seconds
from jobs.worker.control import JobControl
from jobs.worker.drain import job_drain
from jobs.worker.keeper import DrainKeeper
from tests.cluster import wait_for

pytestmark = pytest.mark.django_db


def assert_stopped_job_holds_nothing(job):
    """A job that is not running keeps no pending or running items, and its counters are true."""
    job.refresh_from_db()
    assert job.status in Job.FINISHED
    assert not job.items.filter(status__in=JobItem.ACTIVE).exists()
    assert job_counters_reconcile(job.id) == {}


# A cancel or a failure landing while chunks run --------------------------------------------------
def test_a_cancel_while_a_chunk_fails_retryably_leaves_its_users_free(extract_claim, make_users, running_job):
    users = make_users(2)
    job = running_job(users, error="the model timed out")
    extractor = make_extractor("test", job.options)
    claim = chunk_claim(job)
    job_cancel(job)  # lands while the chunk is being extracted
    chunk_commit(claim, job, extract_claim(claim, extractor), extractor)  # retryable errors for both
    job_finish_if_done(job.id)  # what the drain does next
    assert_stopped_job_holds_nothing(job)
    assert job.cancelled_items == 2
    assert job_start(user_ids=users, enqueue=False).total_items == 2  # no "already in an active job"


def test_a_job_failed_by_another_lane_keeps_no_pending_items(extract_claim, make_users, running_job):
    job = running_job(make_users(4), error="the model timed out", fail_users=["u003", "u004"])
    extractor = make_extractor("test", job.options)
    first, second = chunk_claim(job), chunk_claim(job)
    job_fail(job.id, "fail-fast in another lane")  # e.g. the token cap, a fatal error elsewhere
    chunk_commit(first, job, extract_claim(first, extractor), extractor)  # u001, u002 succeed
    chunk_commit(second, job, extract_claim(second, extractor), extractor)  # u003, u004 would retry
    assert_stopped_job_holds_nothing(job)
    assert dict(job.items.values_list("user_id", "status")) == {
        "u001": "succeeded",
        "u002": "succeeded",
        "u003": "cancelled",
        "u004": "cancelled",
    }
    assert job_resume(job).status == "queued"  # and it can be resumed


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_a_cancel_committing_in_the_middle_of_a_chunk_commit_is_seen(make_users, running_job):
    """The commit reads the job's status under the row lock its counter update takes: a cancel that
    commits while the chunk's commit runs (here: holds the lock meanwhile) cannot be missed. The
    users were never tried (the chunk stopped): they go back to pending only if the job still runs."""
    job = running_job(make_users(2))
    extractor = make_extractor("test", job.options)
    claim = chunk_claim(job)
    stop = ExtractionError("the chunk stopped", stopped=True)
    results = [Outcome(user_id, None, stop) for user_id in claim.user_ids]
    canceller = connection.copy()  # another session
    with canceller.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [job.id])
        committing = threading.Thread(target=lambda: chunk_commit(claim, job, results, extractor))
        committing.start()
        wait_for(waiting_for_a_lock, timeout=10, what="the commit to wait for the job's row")
        cursor.execute("UPDATE jobs_job SET status = 'cancelling' WHERE id = %s", [job.id])
        cursor.execute("COMMIT")
    committing.join(timeout=10)
    canceller.close()
    job_finish_if_done(job.id)
    assert_stopped_job_holds_nothing(job)


def waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_healing_never_cancels_again_what_a_resume_committing_meanwhile_put_back(make_users, running_job):
    """Healing checks that a job is stopped, then cancels its pending items. A resume committing
    between the two put the cancelled items back to pending: the sweep cancelled them again, and
    the queued job had nobody left (it read the status without the lock a resume takes)."""
    job = running_job(make_users(3))
    job_cancel(job)
    job.refresh_from_db()
    assert (job.status, job.cancelled_items) == ("cancelled", 3)
    checked, go_on = threading.Event(), threading.Event()
    swept, reopened = [], []

    def pause_before_the_items_change(execute, sql, params, many, context):
        if sql.startswith(f'UPDATE "{JobItem._meta.db_table}"'):
            checked.set()
            go_on.wait(10)
        return execute(sql, params, many, context)

    def sweep() -> None:
        try:
            with connection.execute_wrapper(pause_before_the_items_change):
                swept.append(items_stopped_sweep(job.id))
        finally:
            connection.close()

    def resume() -> None:
        try:
            reopened.append(job_reopen(job, options=job.options))
        finally:
            connection.close()

    sweeper, resumer = threading.Thread(target=sweep), threading.Thread(target=resume)
    sweeper.start()
    assert checked.wait(10), "the sweep never reached the items"
    resumer.start()
    wait_for(lambda: reopened or waiting_for_a_lock(), timeout=10, what="the resume to end or to wait")
    go_on.set()
    sweeper.join(10)
    resumer.join(10)
    job.refresh_from_db()
    assert (swept, reopened, job.status, job.cancelled_items) == ([0], [3], "queued", 0)
    assert set(job.items.values_list("status", flat=True)) == {"pending"}


def test_healing_repairs_a_stopped_job_that_still_holds_pending_items(make_users, running_job):
    """Rows left by older versions: a cancelled job with pending items locked its users for ever."""
    users = make_users(3)
    job = running_job(users)
    Job.objects.filter(id=job.id).update(status="cancelled", finished_at=timezone.now())
    assert jobs_heal() == [f"job {job.id}: cancelled 3 items a stopped job still held"]
    assert_stopped_job_holds_nothing(job)
    assert job_start(user_ids=users, enqueue=False).total_items == 3


def test_a_resume_while_a_chunk_of_the_failed_job_still_commits_keeps_its_users(make_users, running_job):
    """A resumed job is queued before any drain marks it running: a chunk of its earlier run that
    commits then hands its users back to the resumed job, not to the cancelled pile."""
    job = running_job(make_users(4))
    extractor = make_extractor("test", job.options)
    in_flight = chunk_claim(job)  # u001, u002
    job_fail(job.id, "fail-fast in another lane")  # u003, u004 are cancelled
    job.refresh_from_db()
    job_resume(job)  # and put back to work: the job is queued again
    stopped = ExtractionError("the chunk stopped at its deadline", stopped=True)
    chunk_commit(in_flight, job, [Outcome(u, None, stopped) for u in in_flight.user_ids], extractor)
    job.refresh_from_db()
    assert (job.status, job.cancelled_items) == ("queued", 0)
    assert set(job.items.values_list("status", flat=True)) == {"pending"}
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.cancelled_items) == ("completed", 4, 0)


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_two_resumes_at_once_of_jobs_sharing_a_user_refuse_the_second_by_name(make_users):
    """Each resume checks that its users are free, then takes them: two at once both see the shared
    user free, and the second to write meets the first's uncommitted item in the unique index."""
    make_users(3)
    first = job_cancel(job_start(user_ids=["u001", "u002"], enqueue=False))
    second = job_cancel(job_start(user_ids=["u001", "u003"], enqueue=False))
    resumed, release, refused = threading.Event(), threading.Event(), []

    def resume_first_and_hold():
        with transaction.atomic():
            job_resume(first)
            resumed.set()
            release.wait(timeout=30)
        connection.close()

    def resume_second():
        try:
            job_resume(second)
        except JobError as exc:
            refused.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=resume_first_and_hold)
    holder.start()
    assert resumed.wait(timeout=10)
    competitor = threading.Thread(target=resume_second)
    competitor.start()
    wait_for(waiting_for_a_lock, timeout=10, what="the second resume to wait on the first's user")
    release.set()
    holder.join(timeout=10)
    competitor.join(timeout=10)
    (conflict,) = refused
    assert isinstance(conflict, JobConflict)
    assert (conflict.busy, conflict.job_ids) == ({"u001": first.id}, [first.id])
    second.refresh_from_db()
    assert (second.status, second.cancelled_items) == ("cancelled", 2)  # untouched


# Outages are not the users' errors -------------------------------------------------------------------
def test_an_outage_in_a_chunk_fails_nobody_and_uses_no_attempt(
    make_users, running_job, settings, monkeypatch
):
    """A chunk larger than the fail-fast streak, cut short by the database going away: every user
    is taken up again, none spends an attempt, the job does not fail."""
    settings.JOBS_FAIL_FAST_AFTER, settings.JOBS_DRAIN_TASKS = 3, 1  # one claim of all 10 users
    job = running_job(make_users(10), start={"chunk_size": 10})
    extractor = make_extractor("test")
    real, outages = extractor.extract, []

    def extract(users, control=None):
        if not outages:
            outages.append(len(users))
            raise db.OperationalError("server closed the connection unexpectedly")
        return real(users, control)

    monkeypatch.setattr(extractor, "extract", extract)
    monkeypatch.setattr("jobs.worker.drain.make_extractor", lambda *args: extractor)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.failed_items, job.cancelled_items) == ("completed", 10, 0, 0)
    assert set(job.items.values_list("attempts", "interruptions")) == {(1, 1)}
    assert outages == [10]
    assert job_counters_reconcile(job.id) == {}


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the server ends a session: PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_a_connection_dropped_while_a_chunk_loads_its_behaviours_fails_nobody(
    make_users, running_job, settings, monkeypatch
):
    """The server ends the worker's session while it loads a chunk's behaviours (as
    pg_terminate_backend, a restart or a failover does): a real OperationalError from psycopg."""
    settings.JOBS_FAIL_FAST_AFTER, settings.JOBS_DRAIN_TASKS = 3, 1  # one claim of all 10 users
    job = running_job(make_users(10), start={"chunk_size": 10, "extractor": "rules"})
    real, dropped = services.user_inputs_load, []

    def load(user_ids):
        if not dropped:
            dropped.append(list(user_ids))
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return real(user_ids)

    monkeypatch.setattr(services, "user_inputs_load", load)
    job_drain(job.id)
    job.refresh_from_db()
    assert len(dropped) == 1
    assert (job.status, job.succeeded_items, job.failed_items, job.cancelled_items) == ("completed", 10, 0, 0)
    assert set(job.items.values_list("attempts", flat=True)) == {1}


# Leases ----------------------------------------------------------------------------------------------
def test_a_worker_whose_clock_runs_ahead_neither_steals_live_leases_nor_stamps_long_ones(
    make_users, running_job
):
    job = running_job(make_users(4))
    chunk_claim(job)  # u001, u002: leased for 15 s by the database's clock
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        claim = chunk_claim(job)  # by a worker whose clock is an hour ahead
    assert claim.user_ids == ["u003", "u004"]
    expected = database_now() + timedelta(seconds=15)
    for lease in JobItem.objects.filter(claim_token=claim.token).values_list("lease_expires_at", flat=True):
        assert abs((lease - expected).total_seconds()) < 2


@pytest.fixture
def database_error(settings, monkeypatch, transactional_db):
    """database_error(): the next queries of other threads fail for about a second: PostgreSQL
    terminates their connections; SQLite stays locked longer than their busy timeout."""
    if connection.vendor == "postgresql":

        def inject():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        yield inject
        return
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.1)  # new connections' busy timeout
    lockers = []

    def inject():
        locker = sqlite3.connect(
            connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
        )
        locker.execute("BEGIN IMMEDIATE")  # the write lock, for a second
        lockers.append(locker)
        threading.Timer(1.0, locker.rollback).start()

    yield inject
    for locker in lockers:
        locker.close()


@pytest.mark.django_db(transaction=True)
def test_the_keeper_renews_its_leases_again_after_a_database_error(
    make_users, running_job, settings, database_error, caplog
):
    settings.JOBS_LEASE_SECONDS = 1  # a beat every third of a second
    job = running_job(make_users(2))
    claim = chunk_claim(job)
    control = JobControl(job.id)
    keeper = DrainKeeper(None)
    keeper.hold(claim, control)

    def lease():
        return JobItem.objects.filter(claim_token=claim.token).values_list("lease_expires_at", flat=True)[0]

    with keeper:
        first = lease()
        wait_for(lambda: lease() > first, timeout=5, what="a first renewal")
        database_error()
        wait_for(
            lambda: "could not renew its lease" in caplog.text, timeout=5, what="the keeper to hit the error"
        )
        after_error = lease()
        wait_for(lambda: lease() > after_error, timeout=10, what="a renewal after the error")
    assert not control.lease_lost  # nobody took the items: the chunk goes on


@pytest.mark.django_db(transaction=True)
def test_a_chunk_whose_lease_was_taken_stops_early_and_commits_nothing(
    make_users, running_job, settings, tmp_path
):
    settings.JOBS_LEASE_SECONDS = 1
    calls = tmp_path / "calls.txt"
    job = running_job(make_users(10), seconds_per_user=0.2, calls_file=str(calls), start={"chunk_size": 10})
    extractor = make_extractor("test", job.options)
    keeper = DrainKeeper(None)
    outcome = {}

    def work():
        outcome["claim"] = process_one_chunk(job, extractor, keeper=keeper)
        connection.close()

    with keeper:
        worker = threading.Thread(target=work)
        worker.start()
        wait_for(calls.exists, timeout=10, what="the chunk to start")
        thief = uuid.uuid4()
        assert JobItem.objects.filter(job=job, status="running").update(claim_token=thief) == 10
        worker.join(timeout=20)
    extracted_users = calls.read_text().splitlines()
    assert 1 <= len(extracted_users) <= 5  # it stopped within a beat or two, not after all 10 users
    assert JobItem.objects.filter(claim_token=thief, status="running").count() == 10  # the fence held


def test_a_drain_place_left_by_a_dead_worker_is_given_to_the_next_drain(make_users, running_job, settings):
    settings.JOBS_DRAIN_TASKS = 1
    job = running_job(make_users(2))
    dead = Drain.objects.create(
        job=job, started_at=DatabaseNow(-60), seen_at=DatabaseNow(-settings.JOBS_DRAIN_STALE_SECONDS - 1)
    )
    from jobs.worker.drain import job_drain

    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 2)
    assert not Drain.objects.filter(id=dead.id).exists()


def test_a_surplus_drain_leaves_when_live_drains_hold_every_place(make_users, running_job, settings):
    settings.JOBS_DRAIN_TASKS, settings.JOBS_DRAIN_STALE_SECONDS = 1, 1
    job = running_job(make_users(2))
    Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow(3600))  # alive and well
    from jobs.worker.drain import job_drain

    job_drain(job.id)
    assert job.items.filter(status="pending").count() == 2  # it did nothing


# What must survive a crash of the database -------------------------------------------------------
def _standby_waiters(*, cancel: bool = False) -> list[int]:
    """The sessions whose commit waits for a synchronous standby; with `cancel`, each told to stop
    waiting (its transaction has committed here, only not on the standby)."""
    with connection.cursor() as cursor:
        pid = "pg_cancel_backend(pid)" if cancel else "pid"
        cursor.execute(f"SELECT {pid} FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        return [value for (value,) in cursor.fetchall()]


def _in_thread(action) -> threading.Thread:
    """`action` on a connection of its own in a thread, started."""

    def run():
        try:
            action()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _durable_write_waiting(job: Job) -> threading.Thread:
    """A write of the job's row, in a thread, that waits for the standby. The server's processes
    learn that a standby is required a moment after the reload (its checkpointer tells them): a
    write that commits before then waits for nothing, and the next one is tried."""

    def a_write_that_waits() -> threading.Thread | None:
        control = _in_thread(lambda: Job.objects.filter(id=job.id).update(error="durable"))
        wait_for(lambda: _standby_waiters() or not control.is_alive(), timeout=30, what="the write to end")
        return control if _standby_waiters() else None

    return wait_for(a_write_that_waits, timeout=30, what="a durable write to wait for the standby")


def test_a_claim_does_not_wait_for_the_database_to_make_it_safe(postgres_database, make_users, running_job):
    """A claim lost with a crashed database leaves its items pending and its worker's commit
    fenced out, so it commits without waiting for its WAL to be safe. Here a durable commit waits
    for a synchronous standby that never comes (the control); the claim returns all the same.
    (The test's server commits asynchronously by default, for speed: not during this test.)"""
    job = running_job(make_users(4))
    with connection.cursor() as cursor:
        cursor.execute("ALTER SYSTEM SET synchronous_commit = on")
        cursor.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        cursor.execute("SELECT pg_reload_conf()")
    try:
        control = _durable_write_waiting(job)
        _standby_waiters(cancel=True)
        control.join(timeout=30)
        assert not control.is_alive()

        claimed = []
        claim = _in_thread(lambda: claimed.append(chunk_claim(job)))
        claim.join(timeout=10)
        assert not claim.is_alive(), "the claim waited for the standby"
        assert [item.user_id for item in claimed[0].items] == ["u001", "u002"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER SYSTEM RESET ALL")
            cursor.execute("SELECT pg_reload_conf()")
        _standby_waiters(cancel=True)
    assert JobItem.objects.filter(job=job, status="running").count() == 2


def test_a_claim_lost_with_the_database_leaves_its_users_pending_and_its_work_unwritten(
    extract_claim, make_users, running_job
):
    """What the database has after a crash that lost a claim: its items as they were before it.
    The worker, which still holds the claim, commits nothing, and the users are claimed again."""
    job = running_job(make_users(2))
    extractor = make_extractor("test", job.options)
    claim = chunk_claim(job)
    assert (
        JobItem.objects.filter(job=job).update(
            status="pending", claim_token=None, lease_expires_at=None, started_at=None, attempts=0
        )
        == 2
    )
    committed = chunk_commit(claim, job, extract_claim(claim, extractor), extractor)
    assert committed.owned == 0
    assert not ExtractedEvent.objects.exists()
    job.refresh_from_db()
    assert (job.succeeded_items, job.failed_items) == (0, 0)
    again = chunk_claim(job)
    assert [item.user_id for item in again.items] == ["u001", "u002"]


# Deadlines, backoff, limits ------------------------------------------------------------------------
def test_a_chunk_stops_at_its_deadline_and_commits_what_it_did(make_users, running_job):
    job = running_job(make_users(20), seconds_per_user=0.2, start={"chunk_size": 20})
    process_one_chunk(job, make_extractor("test", job.options), deadline=time.monotonic() + 1.0)
    done = job.items.filter(status="succeeded").count()
    assert 1 <= done < 20
    # Users never tried are not an attempt, and wait for the next claim.
    assert set(job.items.exclude(status="succeeded").values_list("status", "attempts")) == {("pending", 0)}
    assert job_counters_reconcile(job.id) == {}


def test_a_drain_ends_before_the_task_timeout_and_enqueues_its_continuation(
    make_users, running_job, settings, django_capture_on_commit_callbacks
):
    settings.Q_TIMEOUT, settings.JOBS_COMMIT_RESERVE_SECONDS = 4, 3  # chunks must stop 1 s in
    settings.JOBS_DRAIN_TASKS = 1  # claims of the whole chunk (20 users, 4 s), not a share of it
    from jobs.worker.drain import job_drain

    job = running_job(make_users(20), seconds_per_user=0.2, start={"chunk_size": 20})
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        job_drain(job.id, budget_seconds=0.5)
    assert time.monotonic() - started < settings.Q_TIMEOUT
    assert 1 <= job.items.filter(status="succeeded").count() < 20
    assert OrmQ.objects.count() == 1  # the continuation, which takes over the drain's place


def test_llm_options_that_cannot_fit_before_the_task_timeout_are_refused(settings):
    with pytest.raises(JobInvalid) as refused:
        job_start(extractor="llm", options={"timeout": 3600}, enqueue=False)
    message = refused.value.errors["options.timeout"]
    assert "a call may take up to 3600 s, but a chunk is sure of only 330 s" in message
    assert "Q_TIMEOUT 600 s" in message


def test_retry_backoff_doubles_up_to_a_cap_and_never_overflows(settings):
    settings.JOBS_RETRY_BACKOFF_SECONDS, settings.JOBS_RETRY_BACKOFF_MAX_SECONDS = 5, 300
    assert [retry_backoff_seconds(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_backoff_seconds(37) == retry_backoff_seconds(10**9) == 300


def test_a_retry_late_in_an_old_jobs_life_commits_with_the_chunks_successes(make_users, running_job):
    """Older versions allowed 100 attempts: attempt 37 overflowed the backoff and rolled back the
    whole commit, the chunk's successes with it."""
    job = running_job(make_users(2), error="flaky", fail_users=["u002"])
    Job.objects.filter(id=job.id).update(max_attempts=100)
    JobItem.objects.filter(user_id="u002").update(attempts=36)
    job.refresh_from_db()
    process_one_chunk(job, make_extractor("test", job.options))
    assert JobItem.objects.get(user_id="u001").status == "succeeded"
    retried = JobItem.objects.get(user_id="u002")
    assert (retried.status, retried.attempts) == ("pending", 37)
    assert retried.retry_at <= database_now() + timedelta(seconds=300)


def test_attempts_per_user_are_capped(make_users):
    with pytest.raises(JobInvalid) as refused:
        job_start(user_ids=make_users(1), max_attempts=21, enqueue=False)
    assert refused.value.errors == {"max_attempts": "must be an integer from 1 to 20"}


# The broker ----------------------------------------------------------------------------------------
@pytest.fixture
def broker_down(monkeypatch):
    """django-q2 pointed at a Redis that does not answer (a closed port)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:9/0")
    yield
    monkeypatch.undo()


@pytest.mark.django_db(transaction=True)
def test_a_start_while_the_broker_is_down_answers_201_and_healing_rings_it_later(
    api, make_users, broker_down, caplog
):
    make_users(3)
    response = api("operator").post("/api/v1/jobs/", {"user_ids": ["u001", "u002", "u003"]}, format="json")
    assert response.status_code == 201, response.content
    assert "could not enqueue drain tasks" in caplog.text
    job = Job.objects.get()
    assert (job.status, job.total_items, job.bell_rung_at) == ("queued", 3, None)  # never rung
    assert api("operator").post("/api/v1/jobs/", {"user_ids": ["u001"]}, format="json").status_code == 409
    from django_q.conf import Conf

    Conf.ORM, Conf.REDIS = "default", None  # the broker is back
    assert jobs_heal() == [f"job {job.id}: 0 live drains, rang 4 more"]
    assert OrmQ.objects.count() == 4
