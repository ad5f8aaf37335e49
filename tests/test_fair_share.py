"""Many jobs at once: which job a worker serves next (jobs.worker.scheduler). The rules are tried with
the chunks' durations given, not measured: no test here depends on how fast the machine is."""

from collections import Counter

import pytest
from django.db import connection

from eventproject.db import DatabaseNow
from extraction.extractors import make_extractor
from extraction.services import chunk_extract
from jobs.models import Drain, Job
from jobs.services import job_share_set
from jobs.transitions import job_mark_running
from jobs.worker.claims import Claim, chunk_claim
from jobs.worker.commit import chunk_commit
from jobs.worker.drain import drain
from jobs.worker.scheduler import PICK_EVERY_SECONDS, fairest, job_pick
from tests.conftest import started_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs(make_users):
    """jobs(n, **start) -> a running job of the test extractor over n fresh users (chunks of 2)."""
    made = []

    def make(users: int, **start) -> Job:
        ids = make_users(users, prefix=f"j{len(made)}-")
        job = started_job(ids, {}, **{"chunk_size": 2, **start})
        job_mark_running(job.id)
        job.refresh_from_db()
        made.append(job)
        return job

    return make


def a_drain(job: Job | None = None, *, beats_for: float = 0) -> int:
    """A live drain serving `job` (that seems to beat for `beats_for` seconds more)."""
    return Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow(beats_for)).id


def serve_one_chunk(drain_id: int, *, seconds: float) -> int | None:
    """What a drain does at a chunk boundary: pick the job due, do one chunk of it that took
    `seconds`; returns the job served."""
    chunk = chunk_start(drain_id)
    return chunk_end(chunk, seconds=seconds) if chunk else None


def chunk_start(drain_id: int) -> tuple[Job, Claim] | None:
    """A drain at a chunk boundary picks the job due and claims a chunk of it."""
    job = job_pick(drain_id)
    return (job, chunk_claim(job)) if job else None


def chunk_end(chunk: tuple[Job, Claim], *, seconds: float) -> int:
    """The chunk done and committed, having taken `seconds`; returns its job's id."""
    job, claim = chunk
    extractor = make_extractor(job.extractor, job.options)
    outcomes = chunk_extract(user_ids=claim.user_ids, extractor=extractor)
    chunk_commit(claim, job, outcomes, extractor, seconds=seconds)
    return job.id


def test_a_commit_adds_the_chunks_seconds_over_the_jobs_priority(jobs, extract_claim):
    job = jobs(4, priority=Job.Priority.HIGH)
    extractor = make_extractor("test")
    claim = chunk_claim(job)
    chunk_commit(claim, job, extract_claim(claim, extractor), extractor, seconds=3.0)
    job.refresh_from_db()
    assert job.virtual_time == 0.75  # 3 s at priority 4


def test_a_worker_serves_the_job_with_the_least_service_for_its_priority(jobs):
    served, fresh = jobs(10), jobs(10)
    Job.objects.filter(id=served.id).update(virtual_time=8.0)
    Job.objects.filter(id=fresh.id).update(virtual_time=5.0)
    assert fairest(a_drain()) == fresh.id


def test_a_job_that_starts_running_begins_level_with_the_running_ones(jobs):
    """No credit for the time it did not compete: it would take every worker until it caught up."""
    big = jobs(10)
    Job.objects.filter(id=big.id).update(virtual_time=500.0)
    late = jobs(2)
    assert Job.objects.get(id=late.id).virtual_time == 500.0


def test_a_job_started_beside_a_busy_one_is_served_at_the_next_chunk_boundary(jobs):
    big = jobs(40)
    busy = [a_drain(big), a_drain(big)]  # every worker on the big job
    Job.objects.filter(id=big.id).update(virtual_time=120.0)
    small = jobs(3)
    assert job_pick(busy[0]) == small  # the first worker at a boundary switches to it
    assert Drain.objects.get(id=busy[0]).job_id == small.id
    assert job_pick(busy[1]) == big  # the other keeps on (the small job is being served)


@pytest.mark.parametrize("weights", [(2, 2), (4, 2), (8, 2, 1)])
def test_workers_share_their_time_by_priority_and_nobody_starves(jobs, weights):
    made = [jobs(200, chunk_size=1, priority=weight) for weight in weights]
    drain_id = a_drain()
    served = Counter(serve_one_chunk(drain_id, seconds=1.0) for _ in range(11 * sum(weights)))
    for job, weight in zip(made, weights, strict=True):
        assert served[job.id] == 11 * weight  # a share of the chunks (all of one second) by priority


def test_two_workers_give_a_high_job_its_share_at_every_commit_within_a_chunk(jobs):
    """Two workers at chunk boundaries half a chunk apart, a chunk charged when it commits, as on a
    cluster. Picked by the virtual time alone, the high job stayed a chunk behind twice the normal
    one's count on average, up to three: each worker took the job the other had just started, not
    yet charged (on a real cluster both workers switched jobs together). Counting the stints in
    progress, it is ahead as often as behind, never by more than a chunk."""
    high = jobs(300, chunk_size=1, priority=Job.Priority.HIGH)
    normal = jobs(300, chunk_size=1, priority=Job.Priority.NORMAL)
    workers = [a_drain(), a_drain()]
    chunks = {drain_id: chunk_start(drain_id) for drain_id in workers}
    served, leads = Counter(), []
    for _ in range(60):
        for drain_id in workers:  # each worker in turn: its chunk commits, it picks the next
            served[chunk_end(chunks[drain_id], seconds=PICK_EVERY_SECONDS)] += 1
            leads.append(served[high.id] - 2 * served[normal.id])
            chunks[drain_id] = chunk_start(drain_id)
    assert sum(leads) / len(leads) == pytest.approx(0, abs=0.25)  # a chunk behind before: -1
    assert max(map(abs, leads)) <= 1


def test_a_priority_changed_while_a_job_runs_counts_from_its_next_chunk(jobs):
    first, second = jobs(100, chunk_size=1), jobs(100, chunk_size=1)
    drain_id = a_drain()
    before = Counter(serve_one_chunk(drain_id, seconds=1.0) for _ in range(20))
    assert before[first.id] == before[second.id] == 10
    Job.objects.filter(id=second.id).update(priority=Job.Priority.URGENT)  # what the services do
    after = Counter(serve_one_chunk(drain_id, seconds=1.0) for _ in range(25))
    assert (after[first.id], after[second.id]) == (5, 20)  # 2 : 8


def test_a_job_holds_no_more_workers_than_its_cap(jobs, settings):
    settings.JOBS_DRAIN_TASKS = 4
    capped, other = jobs(40, max_workers=1), jobs(40)
    Job.objects.filter(id=capped.id).update(virtual_time=-1.0)  # the fairest: everyone would take it
    first, second = a_drain(), a_drain()
    assert job_pick(first) == capped
    assert job_pick(second) == other  # the capped job has its one worker
    Drain.objects.filter(id=first).update(seen_at=DatabaseNow(-3600))  # its worker died
    assert job_pick(second) == capped


def test_a_cap_lowered_below_the_workers_on_a_job_keeps_that_many_on_it(jobs, settings):
    """Each worker at its next chunk boundary counts the others, finds no room and stops; then none
    could come back either, for the others' rows still named the job: it stood still, "running on
    3 workers", until their rows went stale."""
    settings.JOBS_DRAIN_TASKS = 4
    job = jobs(40)
    drains = [a_drain(), a_drain(), a_drain()]
    assert [job_pick(drain_id) for drain_id in drains] == [job] * 3
    job_share_set(job, max_workers=1)
    assert [fairest(drain_id) for drain_id in drains] == [None] * 3  # each stint ends
    assert [job_pick(drain_id) for drain_id in drains] == [None, None, job]
    assert list(Drain.objects.exclude(job=None).values_list("id", flat=True)) == drains[2:]


def test_a_job_back_from_its_users_backoffs_banked_no_credit_meanwhile(jobs):
    """While every user of A waited out a retry backoff (an endpoint answering 500 for a while), B
    had the workers and A's virtual time stood still: back, A took every chunk for as long as it
    had been away. A job with nothing claimable is kept level by healing, as a sleeping one."""
    from datetime import timedelta

    from django.utils import timezone

    from jobs.healing import jobs_heal
    from jobs.models import JobItem

    away, other = jobs(100, chunk_size=1), jobs(100, chunk_size=1)
    drain_id = a_drain()
    a_drain(beats_for=3600)  # another cluster's drain, idle: it serves no job
    JobItem.objects.filter(job=away).update(retry_at=timezone.now() + timedelta(hours=1))
    for _ in range(4):  # a cluster heals every few seconds meanwhile
        assert {serve_one_chunk(drain_id, seconds=1.0) for _ in range(10)} == {other.id}
        jobs_heal()
    JobItem.objects.filter(job=away).update(retry_at=None)  # the backoffs are over
    back = Counter(serve_one_chunk(drain_id, seconds=1.0) for _ in range(40))
    assert back[other.id] >= 15, back


def test_a_drain_with_no_job_to_serve_leaves(jobs, settings):
    settings.JOBS_DRAIN_STALE_SECONDS = 1
    job = jobs(4, max_workers=1)
    a_drain(job, beats_for=3600)  # a live worker holds the job's only place
    drain(budget_seconds=30)
    assert Drain.objects.count() == 1  # it left, and took its own row with it
    assert Job.objects.get(id=job.id).succeeded_items == 0


def test_one_drain_finishes_every_job_it_shares_itself_between(jobs):
    made = [jobs(6), jobs(5, priority=Job.Priority.HIGH), jobs(3, priority=Job.Priority.LOW)]
    drain(budget_seconds=float("inf"))
    for job in made:
        job.refresh_from_db()
        assert (job.status, job.succeeded_items) == ("completed", job.total_items)
    assert not Drain.objects.exists()


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_two_workers_switching_to_a_capped_job_at_once_do_not_both_get_it(jobs):
    import threading

    capped = jobs(40, max_workers=1)
    Job.objects.filter(id=capped.id).update(virtual_time=-1.0)
    jobs(40)
    drains = [a_drain(), a_drain()]
    picked, start = [], threading.Barrier(2)

    def pick(drain_id):
        start.wait()
        picked.append(job_pick(drain_id).id)
        connection.close()

    threads = [threading.Thread(target=pick, args=(d,)) for d in drains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(picked).count(capped.id) == 1
