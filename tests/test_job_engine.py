"""The worker loop, called directly: claims, leases, fenced commits, retries, fail-fast."""

from datetime import timedelta

import pytest

from eventproject.db import DatabaseNow, database_now
from extraction.extractors import Control, make_extractor
from extraction.models import ExtractedEvent, ExtractionState
from extraction.services import chunk_extract
from jobs.models import Job, JobItem
from jobs.services import job_counters_reconcile, job_start
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim
from jobs.worker.commit import chunk_commit
from jobs.worker.control import JobControl
from jobs.worker.drain import job_drain
from jobs.worker.keeper import DrainKeeper
from tests.cluster import wait_for

pytestmark = pytest.mark.django_db


def near(moment, expected, *, within=2.0) -> bool:
    """`moment` is `expected` give or take `within` seconds (the database clock ticks meanwhile)."""
    return abs((moment - expected).total_seconds()) <= within


def statuses(job):
    return dict(job.items.values_list("user_id", "status"))


def assert_counters_match_items(job):
    assert job_counters_reconcile(job.id) == {}


def test_a_job_drains_to_completion(make_users):
    ids = make_users(5, behaviors=3)
    job = job_start(user_ids=ids, chunk_size=2, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.failed_items) == ("completed", 5, 0)
    assert job.event_count == ExtractedEvent.objects.count() == 10  # purchase + one merged browse each
    assert set(statuses(job).values()) == {"succeeded"}
    assert set(job.items.values_list("event_count", flat=True)) == {2}
    assert set(job.items.values_list("attempts", flat=True)) == {1}
    assert ExtractionState.objects.filter(status="succeeded").count() == 5
    assert_counters_match_items(job)


def test_a_claim_takes_a_chunk_with_a_fresh_token_and_a_lease_on_the_database_clock(make_users, running_job):
    job = running_job(make_users(3))
    claim = chunk_claim(job)
    now = database_now()
    assert claim.user_ids == ["u001", "u002"]
    items = JobItem.objects.filter(claim_token=claim.token)
    assert items.count() == 2
    for item in items:
        assert (item.status, item.attempts) == ("running", 1)
        assert near(item.lease_expires_at, now + timedelta(seconds=15))
        assert near(item.started_at, now)
    assert chunk_claim(job).user_ids == ["u003"]
    assert chunk_claim(job) is None


def test_nothing_is_claimed_from_a_job_that_is_not_running(make_users):
    job = job_start(user_ids=make_users(2), enqueue=False)
    assert job.status == "queued"
    assert chunk_claim(job) is None


def test_an_expired_lease_is_claimed_again_going_on_with_the_same_attempt(
    make_users, running_job, expire_leases
):
    job = running_job(make_users(2), start={"chunk_size": 4})  # reclaimed at half the chunk size
    first = chunk_claim(job)
    assert chunk_claim(job) is None
    expire_leases(job)
    second = chunk_claim(job)
    assert second.user_ids == first.user_ids
    assert second.token != first.token
    # Its worker died: not the users' doing, so not an attempt of theirs; an interruption.
    assert set(JobItem.objects.values_list("attempts", "interruptions")) == {(1, 1)}


def test_a_stale_token_cannot_commit(extract_claim, make_users, running_job, expire_leases):
    job = running_job(make_users(2), start={"chunk_size": 4})  # reclaimed at half the chunk size
    extractor = make_extractor("test")
    stale = chunk_claim(job)
    expire_leases(job)
    fresh = chunk_claim(job)
    assert chunk_commit(stale, job, extract_claim(stale, extractor), extractor).owned == 0
    assert set(statuses(job).values()) == {"running"}
    assert not ExtractedEvent.objects.exists()
    assert process_one_chunk(job, extractor) is None  # the fresh claim still holds them
    assert chunk_commit(fresh, job, extract_claim(fresh, extractor), extractor).owned == 2
    assert set(statuses(job).values()) == {"succeeded"}


def test_tokens_paid_for_work_lost_with_its_lease_still_count(make_users, running_job, expire_leases):
    job = running_job(make_users(2), tokens_per_user=10, start={"chunk_size": 4})
    extractor = make_extractor("test", job.options)
    stale = chunk_claim(job)
    expire_leases(job)
    fresh = chunk_claim(job)
    for claim, owned in ((stale, 0), (fresh, 2)):
        control = Control()
        outcomes = chunk_extract(user_ids=claim.user_ids, extractor=extractor, control=control)
        assert chunk_commit(claim, job, outcomes, extractor).owned == owned
    job.refresh_from_db()
    assert set(statuses(job).values()) == {"succeeded"}
    assert (job.prompt_tokens, job.completion_tokens) == (40, 20)  # both attempts were paid for
    assert set(job.items.values_list("prompt_tokens", "completion_tokens")) == {(20, 10)}


def test_a_transient_error_is_retried_with_backoff_then_fails_with_the_last_error(
    make_users, running_job, settings
):
    settings.JOBS_RETRY_BACKOFF_SECONDS = 10
    job = running_job(make_users(1), error="model timed out")
    extractor = make_extractor("test", job.options)

    def backoff_over():
        JobItem.objects.update(retry_at=DatabaseNow(-1))

    assert process_one_chunk(job, extractor)
    item = JobItem.objects.get()
    assert (item.status, item.attempts, item.error) == ("pending", 1, "model timed out")
    assert near(item.retry_at, database_now() + timedelta(seconds=10))
    assert process_one_chunk(job, extractor) is None  # backing off
    backoff_over()
    assert process_one_chunk(job, extractor)
    assert near(JobItem.objects.get().retry_at, database_now() + timedelta(seconds=20))
    backoff_over()
    assert process_one_chunk(job, extractor)
    item = JobItem.objects.get()
    assert (item.status, item.attempts, item.error) == ("failed", 3, "model timed out")
    assert ExtractionState.objects.get().status == "failed"
    job.refresh_from_db()
    assert (job.failed_items, job.succeeded_items) == (1, 0)
    assert_counters_match_items(job)


def test_a_permanent_error_fails_the_item_at_once(make_users, running_job):
    job = running_job(make_users(3), error="no behaviours in range", permanent=True, fail_users=["u002"])
    process_one_chunk(job, make_extractor("test", job.options))
    assert statuses(job) == {"u001": "succeeded", "u002": "failed", "u003": "pending"}
    assert JobItem.objects.get(user_id="u002").attempts == 1


def test_many_identical_errors_in_a_row_fail_the_job_fast(make_users, running_job, settings):
    settings.JOBS_FAIL_FAST_AFTER = 4
    job = running_job(make_users(10), error="401 invalid api key", permanent=True)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == (
        "4 items in a row failed with the same kind of error (401 invalid api key); "
        "the last one: 401 invalid api key"
    )
    assert (job.failed_items, job.cancelled_items) == (4, 6)
    assert not job.items.filter(status__in=["pending", "running"]).exists()
    assert_counters_match_items(job)


def test_a_success_breaks_the_streak(make_users, running_job, settings):
    settings.JOBS_FAIL_FAST_AFTER = 3
    job = running_job(make_users(6), error="bad", permanent=True, fail_users=["u001", "u002", "u004", "u005"])
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.failed_items, job.succeeded_items) == ("completed", 4, 2)


def test_a_fatal_extractor_error_fails_the_job_and_releases_its_chunk(make_users, running_job):
    job = running_job(make_users(5), fatal="endpoint rejected the API key", tokens_per_user=10)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "endpoint rejected the API key")
    assert set(statuses(job).values()) == {"cancelled"}
    assert job.cancelled_items == 5
    assert_counters_match_items(job)
    # What the first chunk paid before the error stays on its items and the job.
    assert (job.prompt_tokens, job.completion_tokens) == (20, 10)
    assert sorted(job.items.values_list("user_id", "prompt_tokens", "completion_tokens")) == [
        ("u001", 10, 5),
        ("u002", 10, 5),
        ("u003", 0, 0),
        ("u004", 0, 0),
        ("u005", 0, 0),
    ]


def test_an_extractor_crash_is_a_retryable_error_for_its_chunk(make_users, running_job, monkeypatch):
    job = running_job(make_users(2))
    extractor = make_extractor("test")

    def crash(users, control=None):
        raise KeyError("behaviours")

    monkeypatch.setattr(extractor, "extract", crash)
    process_one_chunk(job, extractor)
    assert set(job.items.values_list("status", "attempts", "error")) == {
        ("pending", 1, "KeyError: 'behaviours'")
    }


def test_an_unknown_extractor_fails_the_job_with_its_name(make_users):
    job = job_start(user_ids=make_users(1), enqueue=False)
    Job.objects.filter(id=job.id).update(extractor="gone")
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("cannot start extractor 'gone': unknown extractor 'gone'")


def test_a_user_that_kills_every_worker_taking_it_ends_up_alone_and_fails(
    extract_claim, make_users, running_job, expire_leases
):
    """A poison pill (a user whose data crashes or hangs its worker) is claimed again in halving
    claims until it is alone, then fails after max_attempts losses alone; the users it shared
    claims with are extracted, none of them failed."""
    job = running_job(make_users(8), start={"chunk_size": 8, "max_attempts": 2})
    extractor = make_extractor("test")
    poisoned = []  # the sizes of the claims that held it
    while claim := chunk_claim(job):
        if "u003" in claim.user_ids:
            poisoned.append(len(claim.items))
            expire_leases(job)  # its worker died
        else:
            chunk_commit(claim, job, extract_claim(claim, extractor), extractor)
    assert poisoned == [8, 4, 2, 1, 1]  # halving after each loss, then alone, max_attempts times
    poison = JobItem.objects.get(user_id="u003")
    assert (poison.status, poison.attempts, poison.interruptions) == ("failed", 1, 5)
    assert poison.error == (
        "processing this user was cut short 5 times, the last 2 with this user alone (its worker died, "
        "froze past its lease or lost the database each time)"
    )
    assert statuses(job) == {f"u{n:03d}": "succeeded" for n in range(1, 9)} | {"u003": "failed"}
    assert set(job.items.exclude(user_id="u003").values_list("attempts", flat=True)) == {1}
    assert_counters_match_items(job)


def test_a_user_deleted_mid_job_fails_as_unknown(make_users, running_job):
    job = running_job(make_users(2))
    from extraction.models import UserProfile

    UserProfile.objects.filter(user_id="u002").delete()
    process_one_chunk(job, make_extractor("test"))
    item = JobItem.objects.get(user_id="u002")
    assert (item.status, item.error) == ("failed", "unknown user: no profile")


def test_a_claim_starts_above_where_the_last_one_ended_and_the_drain_looks_back_once(make_users, running_job):
    job = running_job(make_users(5))
    first = chunk_claim(job)
    later = chunk_claim(job, after=JobItem.objects.get(user_id="u004").id)
    assert (first.user_ids, later.user_ids) == (["u001", "u002"], ["u005"])
    assert chunk_claim(job, after=later.last_id) is None
    assert chunk_claim(job).user_ids == ["u003", "u004"]  # from the start again


def test_a_drain_finds_items_below_its_position(make_users, running_job):
    job = running_job(make_users(4))
    claim = chunk_claim(job)  # u001, u002 held by someone else for a while
    JobItem.objects.filter(claim_token=claim.token).update(status="pending", claim_token=None)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == ("completed", 4)


@pytest.mark.django_db(transaction=True)
def test_a_drain_keeper_extends_its_chunks_leases_and_beats_its_place(make_users, running_job, settings):
    settings.JOBS_LEASE_SECONDS = 1  # the keeper beats every third of a second
    job = running_job(make_users(2))
    claim = chunk_claim(job)
    first = JobItem.objects.get(user_id="u001").lease_expires_at
    keeper = DrainKeeper(None)
    keeper.hold(claim, JobControl(job.id))
    with keeper:
        wait_for(
            lambda: JobItem.objects.get(user_id="u001").lease_expires_at > first + timedelta(seconds=0.3),
            timeout=5,
            what="the lease to be extended",
        )
    assert not keeper.keeper.thread.is_alive()  # it stops with the drain
    assert JobItem.objects.filter(claim_token=claim.token, lease_expires_at__gt=first).count() == 2


def test_claims_shrink_near_the_end_so_workers_finish_together(make_users, settings):
    settings.JOBS_DRAIN_TASKS = 2  # an even share of what is left for each of two lanes
    job = job_start(user_ids=make_users(20), extractor="test", chunk_size=10, enqueue=False)
    done = []
    job_drain(job.id, on_chunk=lambda: done.append(Job.objects.get(id=job.id).succeeded_items))
    sizes = [after - before for before, after in zip([0, *done], done, strict=False)]
    assert sizes == [10, 5, 3, 1, 1]


def test_a_commit_that_lost_some_of_its_items_writes_the_events_of_the_others_only(
    extract_claim, make_users, running_job
):
    """The optimistic commit writes every succeeded user's events first; when the fence finds some
    items taken, it rolls back and commits the careful way: no events of users it no longer owns."""
    import uuid

    job = running_job(make_users(4), start={"chunk_size": 4})
    extractor = make_extractor("test")
    claim = chunk_claim(job)
    thief = uuid.uuid4()
    JobItem.objects.filter(user_id__in=["u002", "u004"]).update(claim_token=thief)
    assert chunk_commit(claim, job, extract_claim(claim, extractor), extractor).owned == 2
    assert sorted(ExtractedEvent.objects.values_list("user_id", flat=True)) == ["u001", "u003"]
    assert statuses(job) == {"u001": "succeeded", "u002": "running", "u003": "succeeded", "u004": "running"}
    job.refresh_from_db()
    assert (job.succeeded_items, job.event_count) == (2, 2)
