import pytest
from django_q.models import OrmQ

from extraction.models import ExtractionState
from jobs.errors import JobConflict, JobInvalid
from jobs.models import Job, JobItem
from jobs.services import job_start
from tests.threads import at_once

pytestmark = pytest.mark.django_db


def test_it_creates_one_pending_item_per_user_needing_extraction(
    make_users, django_capture_on_commit_callbacks
):
    ids = make_users(5)
    ExtractionState.objects.create(
        user_id="u001", status="succeeded", attempted_at="2024-06-01T00:00Z", input_version=1
    )  # fresh: not needed
    with django_capture_on_commit_callbacks(execute=True):
        job = job_start(chunk_size=2)
    assert (job.status, job.total_items, job.selection) == ("queued", 4, {"mode": "needing_extraction"})
    assert sorted(job.items.values_list("user_id", flat=True)) == ids[1:]
    assert set(job.items.values_list("status", "attempts")) == {("pending", 0)}
    assert OrmQ.objects.count() == 2  # a drain task per chunk, at most JOBS_DRAIN_TASKS


def test_nothing_to_do_gives_a_job_completed_at_once(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = job_start()
    assert (job.status, job.total_items) == ("completed", 0)
    assert job.started_at and job.finished_at
    assert callbacks == []


def test_users_already_in_an_active_job_are_left_out_of_everyone(make_users):
    make_users(3)
    first = job_start(user_ids=["u001"])
    second = job_start()
    assert sorted(second.items.values_list("user_id", flat=True)) == ["u002", "u003"]
    assert first.items.get().status == "pending"


def test_explicit_users_are_deduplicated(make_users):
    make_users(3)
    job = job_start(user_ids=["u002", "u001", "u002", "u003"], max_attempts=5)
    assert (job.total_items, job.max_attempts, job.selection) == (3, 5, {"mode": "users", "count": 3})


def test_unknown_users_are_refused_by_name(make_users):
    make_users(2)
    with pytest.raises(JobInvalid) as caught:
        job_start(user_ids=["u001", "ghost", "nobody"])
    assert caught.value.errors == {"user_ids": "unknown users: ghost, nobody"}
    assert not Job.objects.exists()


def test_users_in_an_active_job_are_refused_with_that_job(make_users):
    make_users(3)
    first = job_start(user_ids=["u001", "u002"])
    with pytest.raises(JobConflict) as caught:
        job_start(user_ids=["u002", "u003", "u001"])
    assert caught.value.busy == {"u001": first.id, "u002": first.id}
    assert caught.value.job_ids == [first.id]
    assert str(caught.value) == f"2 users are already in an active job (u001, u002; job {first.id})"
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    ("kwargs", "errors"),
    [
        ({"extractor": "magic"}, {"extractor": "unknown extractor 'magic'"}),
        ({"options": {"speed": 1}}, {"options.speed": "unknown option for extractor 'rules'"}),
        ({"user_ids": []}, {"user_ids": "give at least one user id"}),
        ({"user_ids": "u001"}, {"user_ids": "must be a list of user ids"}),
        ({"user_ids": ["u001", None, ""]}, {"user_ids": "item 1 is not a string; item 2 is empty"}),
        ({"chunk_size": 0}, {"chunk_size": "must be an integer from 1 to 10000"}),
        ({"max_attempts": 1000}, {"max_attempts": "must be an integer from 1 to 20"}),
    ],
)
def test_bad_input_is_refused_field_by_field(make_users, kwargs, errors):
    make_users(1)
    with pytest.raises(JobInvalid) as caught:
        job_start(**kwargs)
    assert caught.value.errors.keys() == errors.keys()
    for field, message in errors.items():
        assert caught.value.errors[field].startswith(message)
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_starts_over_the_same_users_cannot_both_win(make_users):
    ids = make_users(50)
    outcomes = at_once(lambda: job_start(user_ids=ids), caught=(JobConflict,))
    jobs = [o for o in outcomes if isinstance(o, Job)]
    conflicts = [o for o in outcomes if isinstance(o, JobConflict)]
    assert (len(jobs), len(conflicts)) == (1, 1)
    assert conflicts[0].job_ids == [jobs[0].id]
    assert JobItem.objects.count() == 50
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_starts_over_everyone_share_the_users(make_users):
    make_users(200)
    jobs = at_once(job_start, caught=(JobConflict,))
    assert all(isinstance(job, Job) for job in jobs)
    assert sum(job.total_items for job in jobs) == 200
    assert JobItem.objects.values("user_id").distinct().count() == 200


def test_the_id_cap_holds_in_the_service_itself_whoever_calls_it(make_users, settings):
    """Every entry point counts ids (API, admin, commands), and so does job_start: a caller that
    forgot would otherwise stage a million ids."""
    settings.JOBS_MAX_USER_IDS = 3
    ids = make_users(3)
    with pytest.raises(JobInvalid) as refused:
        job_start(user_ids=[*ids, ids[0]], enqueue=False)  # four entries, one of them twice
    assert refused.value.errors == {
        "user_ids": "More than 3 user ids (4 so far): at most 3 per job (JOBS_MAX_USER_IDS, as in the API). "
        "Split the list."
    }
    assert job_start(user_ids=ids, enqueue=False).total_items == 3
