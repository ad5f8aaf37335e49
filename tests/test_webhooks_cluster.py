"""Integration: webhooks delivered by real qcluster processes to a real receiver, which goes down,
hangs, or loses the cluster sending to it; and schedules due under two real clusters at once."""

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from jobs.models import Job, Schedule
from jobs.schedules import schedule_create
from jobs.services import job_run_here, job_start
from tests.cluster import wait_for
from webhooks.models import Attempt, Delivery, Event

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Loopback receivers allowed; quick heals and retries; a short deadline (the lease is 5 s beyond it).
CLUSTER_ENV = {
    "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES": "1",
    "WEBHOOKS_TIMEOUT_SECONDS": "2",
    "WEBHOOKS_RETRY_BACKOFF_SECONDS": "0.5",
    "WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS": "1",
    "JOBS_HEAL_SECONDS": "0.3",
}


@pytest.fixture
def clusters(clusters):
    return lambda **env: clusters(**{**CLUSTER_ENV, **env})


def one_user_jobs(users: list[str]) -> list[Job]:
    """A job of the test extractor per user; each completes within moments on a cluster."""
    return [job_start(user_ids=[user], extractor="test") for user in users]


def statuses() -> list[str]:
    return sorted(Delivery.objects.values_list("status", flat=True))


def test_a_receiver_down_for_a_while_gets_every_event_once_it_is_back(
    clusters, receiver, endpoint, make_users
):
    _, secret = endpoint("job.completed")
    receiver.stop()  # connections refused
    cluster = clusters()
    one_user_jobs(make_users(3))

    def refused_twice_each():
        counts = list(Delivery.objects.values_list("attempt_count", flat=True))
        return len(counts) == 3 and min(counts) >= 2

    wait_for(refused_twice_each, timeout=60, what=f"failed attempts; cluster said:\n{cluster.output()}")
    assert set(Attempt.objects.values_list("error", flat=True)) == {"connection refused"}
    receiver.start()
    wait_for(lambda: statuses() == ["succeeded"] * 3, timeout=60, what="every delivery to succeed")
    events = set(Event.objects.values_list("message_id", flat=True))
    assert set(receiver.ids()) == events and len(events) == 3
    for request in receiver.received:
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "job.completed"


def test_a_cluster_killed_mid_delivery_loses_no_event(clusters, receiver, endpoint, make_users):
    endpoint("job.completed")
    receiver.behaviour.hang = True
    first = clusters(WEBHOOKS_TIMEOUT_SECONDS="5")
    one_user_jobs(make_users(1))
    wait_for(
        lambda: receiver.received,
        timeout=60,
        what=f"the delivery to be sent; cluster said:\n{first.output()}",
    )
    first.kill()  # mid-delivery: the receiver holds the request, the delivery is `sending`
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempt_count, Attempt.objects.count()) == ("sending", 1, 0)
    receiver.behaviour.hang = False
    receiver.released.set()  # the dead cluster's request gets its answer into the void
    clusters(WEBHOOKS_TIMEOUT_SECONDS="5")  # claims it again once the dead one's lease (10 s) runs out
    wait_for(lambda: statuses() == ["succeeded"], timeout=60, what="the delivery to succeed after the kill")
    delivery.refresh_from_db()
    assert delivery.attempt_count == 2
    assert list(Attempt.objects.values_list("number", "status_code")) == [(2, 200)]
    assert receiver.ids() == [delivery.event.message_id] * 2  # at least once: receivers drop the repeat


def test_receivers_that_hang_or_answer_slowly_do_not_hold_workers_past_the_timeout(
    clusters, receiver, endpoint, make_users
):
    endpoint("job.completed")
    receiver.behaviour.hang = True
    cluster = clusters(Q_WORKERS="1", WEBHOOKS_TIMEOUT_SECONDS="1")  # one worker: a held one would stall all
    users = make_users(4)
    one_user_jobs(users[:1])
    wait_for(
        lambda: Attempt.objects.count() >= 2, timeout=60, what=f"attempts; cluster said:\n{cluster.output()}"
    )
    later = one_user_jobs(users[1:])  # the only worker is not held by the hanging receiver
    wait_for(
        lambda: Job.objects.filter(id__in=[job.id for job in later], status="completed").count() == 3,
        timeout=60,
        what="the later jobs to complete",
    )
    attempts = list(Attempt.objects.values_list("duration_ms", "error"))
    assert all(
        ms < 2500 and error == "no answer within 1 s (WEBHOOKS_TIMEOUT_SECONDS)" for ms, error in attempts
    )
    receiver.behaviour.hang, receiver.behaviour.delay = False, 0.5  # slow, within the deadline
    receiver.released.clear()
    wait_for(lambda: statuses() == ["succeeded"] * 4, timeout=60, what="slow answers to count as delivered")


def test_a_hanging_receiver_with_a_backlog_holds_one_worker_and_a_job_runs_beside_it(
    clusters, receiver, endpoint, make_users
):
    """Eight job ends to announce to a receiver that never answers, and a job queued behind their
    tasks: each attempt would hold a worker for the whole timeout, every worker at once, and the
    job would wait behind them all. One attempt at a time per endpoint leaves the other worker free."""
    endpoint("job.completed")
    receiver.behaviour.hang = True
    users = make_users(9)
    for user in users[:8]:
        job_run_here(job_start(user_ids=[user], extractor="test", enqueue=False))
    assert Delivery.objects.count() == 8
    later = job_start(user_ids=users[8:], extractor="test")  # its drain's task after theirs
    cluster = clusters(Q_WORKERS="2")
    wait_for(
        lambda: Job.objects.filter(id=later.id, status="completed").exists(),
        timeout=60,
        what=f"the later job to complete; cluster said:\n{cluster.output()}",
    )
    assert len(receiver.received) < 6, "the job waited behind the deliveries"
    receiver.behaviour.hang = False
    receiver.released.set()  # the attempt in flight is answered; the backlog follows, one by one
    wait_for(lambda: statuses() == ["succeeded"] * 9, timeout=60, what="every delivery to succeed")
    assert receiver.most_open == 1


def test_a_schedule_due_under_two_clusters_starts_one_job_each_time(clusters, make_users):
    make_users(3)
    # Yearly: the time it moves on to is never reached during the test.
    schedule = schedule_create(name="race", cron="0 0 1 1 *", users="all", extractor="test")
    Schedule.objects.filter(id=schedule.id).update(next_run_at=None, active=False)  # until both are up
    both = [clusters(JOBS_HEAL_SECONDS="0.1"), clusters(JOBS_HEAL_SECONDS="0.1")]
    for cluster in both:
        wait_for(lambda c=cluster: "running." in c.output(), timeout=60, what="the clusters to start")
    for round_number in range(1, 4):
        due = timezone.now()
        Schedule.objects.filter(id=schedule.id).update(active=True, next_run_at=due)  # due now
        wait_for(
            lambda n=round_number: Job.objects.filter(schedule=schedule, status="completed").count() == n,
            timeout=60,
            what=f"run {round_number} to complete",
        )
        schedule.refresh_from_db()
        assert schedule.next_run_at > due  # claimed: moved on to next year
    assert list(schedule.runs.values_list("outcome", flat=True)) == ["started"] * 3
    assert schedule.jobs.count() == 3
    assert sum("schedule 'race': started" in cluster.output() for cluster in both) >= 1
