"""A job's share of the workers: chosen at start, shown, and changed while it runs, the same way from
the API, the admin and the commands; progress says what a job waits for."""

import pytest
from django.urls import reverse

from eventproject.db import DatabaseNow
from jobs.errors import JobInvalid, JobStateError
from jobs.models import Drain, Job
from jobs.progress import job_progress
from jobs.services import job_share_set, job_start

pytestmark = pytest.mark.django_db


def test_a_job_starts_with_the_priority_and_cap_asked_for(api, make_users):
    make_users(3)
    body = {"user_ids": ["u001", "u002"], "priority": "high", "max_workers": 2}
    started = api("operator").post("/api/v1/jobs/", body, format="json")
    assert started.status_code == 201, started.content
    job = started.json()
    assert (job["priority"], job["max_workers"]) == ("high", 2)
    assert (job["progress"]["priority"], job["progress"]["max_workers"]) == ("high", 2)
    assert Job.objects.values_list("priority", "max_workers").get() == (Job.Priority.HIGH, 2)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"priority": "top"}, {"priority": ['"top" is not a valid choice.']}),
        ({"priority": 4}, {"priority": ['"4" is not a valid choice.']}),
        ({"max_workers": 0}, {"max_workers": ["Ensure this value is greater than or equal to 1."]}),
        ({"max_workers": 10**6}, {"max_workers": ["Ensure this value is less than or equal to 1000."]}),
    ],
)
def test_a_bad_share_is_refused_by_field(api, make_users, body, errors):
    job = job_start(user_ids=make_users(1), enqueue=False)
    answer = api("operator").patch(f"/api/v1/jobs/{job.id}/", body, format="json")
    assert (answer.status_code, answer.json()) == (400, errors)


def test_a_running_jobs_share_changes_with_patch_and_shows_in_its_progress(api, running_job, make_users):
    job = running_job(make_users(4))
    answer = api("operator").patch(
        f"/api/v1/jobs/{job.id}/", {"priority": "urgent", "max_workers": 1}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert (answer.json()["priority"], answer.json()["progress"]["max_workers"]) == ("urgent", 1)
    cleared = api("operator").patch(f"/api/v1/jobs/{job.id}/", {"max_workers": None}, format="json")
    assert (cleared.json()["priority"], cleared.json()["max_workers"]) == ("urgent", None)


def test_raising_a_running_jobs_cap_rings_the_drains_it_now_may_hold(
    running_job, make_users, django_capture_on_commit_callbacks
):
    """Drains a cap turned away had left: the job waited for a heal (5 to 15 s) to get them back."""
    from django_q.models import OrmQ

    job = running_job(make_users(4), start={"max_workers": 1})
    with django_capture_on_commit_callbacks(execute=True):
        job_share_set(job, max_workers=3)
    assert OrmQ.objects.count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        job_share_set(job, max_workers=2)  # lowered: the drains it holds leave at their next chunk
        job_share_set(job, priority=Job.Priority.HIGH)
    assert OrmQ.objects.count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        job_share_set(job, max_workers=None)  # no cap: as many as any job gets (JOBS_DRAIN_TASKS, 4)
    assert OrmQ.objects.count() == 4


def test_only_operators_change_a_share_and_a_finished_job_keeps_its_own(api, make_users):
    job = job_start(user_ids=make_users(1), enqueue=False)
    assert (
        api("viewer").patch(f"/api/v1/jobs/{job.id}/", {"priority": "low"}, format="json").status_code == 403
    )
    Job.objects.filter(id=job.id).update(status=Job.Status.COMPLETED)
    refused = api("operator").patch(f"/api/v1/jobs/{job.id}/", {"priority": "low"}, format="json")
    assert refused.status_code == 409
    assert refused.json() == {
        "detail": f"job {job.id} is completed; its share of the workers no longer matters"
    }


def test_the_service_names_each_bad_value(make_users):
    job = job_start(user_ids=make_users(1), enqueue=False)
    with pytest.raises(JobInvalid) as refused:
        job_share_set(job, priority=3, max_workers=True)
    assert set(refused.value.errors) == {"priority", "max_workers"}
    Job.objects.filter(id=job.id).update(status=Job.Status.COMPLETED)
    with pytest.raises(JobStateError):
        job_share_set(job, priority=Job.Priority.LOW)


def test_progress_says_what_a_job_waits_for(running_job, make_users):
    job = running_job(make_users(4))
    progress = job_progress(job)
    assert (progress.workers, progress.waiting_for, progress.activity) == (
        0,
        "worker",
        "waiting for a worker",
    )
    for _ in range(2):
        Drain.objects.create(job=job, started_at=DatabaseNow(), seen_at=DatabaseNow())
    progress = job_progress(job)
    assert (progress.workers, progress.waiting_for, progress.activity) == (2, None, "running on 2 workers")
    Drain.objects.update(seen_at=DatabaseNow(-3600))  # their workers died
    assert job_progress(job).waiting_for == "worker"


def test_a_change_of_share_changes_the_progress_tag(api, running_job, make_users):
    job = running_job(make_users(2))
    first = api("viewer").get(f"/api/v1/jobs/{job.id}/progress/")
    job_share_set(job, priority=Job.Priority.HIGH)
    again = api("viewer").get(f"/api/v1/jobs/{job.id}/progress/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 200 and again.json()["priority"] == "high"


def test_the_commands_start_and_change_a_jobs_share(run, make_users):
    make_users(3)
    run("extract", "--users", "u001", "u002", "--priority", "high", "--max-workers", "3", "--detach")
    job = Job.objects.get()
    assert (job.priority, job.max_workers) == (Job.Priority.HIGH, 3)
    out, _ = run("job_share", str(job.id), "--priority", "low", "--max-workers", "0")
    assert out == f"job {job.id}: priority low, no cap on its workers\n"
    job.refresh_from_db()
    assert (job.priority, job.max_workers) == (Job.Priority.LOW, None)


def test_the_share_command_refuses_what_it_cannot_do(run, make_users):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no job 99"):
        run("job_share", "99", "--priority", "low")
    job = job_start(user_ids=make_users(1), enqueue=False)
    with pytest.raises(CommandError, match="say what to change"):
        run("job_share", str(job.id))


@pytest.mark.parametrize("value", ["-3", "1001", "two"])
@pytest.mark.parametrize(
    "command",
    [("job_share", "1"), ("extract", "--detach"), ("schedule", "add", "x", "--cron", "0 3 * * *")],
    ids=lambda command: command[0],
)
def test_the_commands_say_what_max_workers_takes(run, command, value):
    """-3 was sent on to the model, which said "or empty for no cap": a command has no empty; 0 is."""
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as refused:
        run(*command, "--max-workers", value)
    assert str(refused.value) == (
        f"Error: argument --max-workers: must be 0 (no cap) or a whole number from 1 to 1000, not {value!r}"
    )
    assert not Job.objects.exists()


def test_the_admin_changes_a_jobs_share_from_its_page(client, personas, make_users):
    job = job_start(user_ids=make_users(2), enqueue=False)
    client.force_login(personas["operator"])
    page = client.get(reverse("admin:jobs_job_change", args=[job.id])).content.decode()
    assert 'id="job-share"' in page and 'id="job-priority"' in page
    url = reverse("admin:jobs_job_action", args=[job.id, "share"])
    answer = client.post(url, {"priority": "8", "max_workers": "2"}, follow=True)
    assert f"Job {job.id}: priority urgent, at most 2 workers." in answer.content.decode()
    job.refresh_from_db()
    assert (job.priority, job.max_workers) == (Job.Priority.URGENT, 2)
    answer = client.post(url, {"priority": "3", "max_workers": ""}, follow=True)
    assert "Priority: must be one of 1 (low), 2 (normal), 4 (high), 8 (urgent)" in answer.content.decode()
    answer = client.post(url, {"priority": "²", "max_workers": ""}, follow=True)  # a digit int() refuses
    assert "Priority: must be one of" in answer.content.decode()
    answer = client.post(url, {"priority": "2", "max_workers": "9" * 5000}, follow=True)  # past int()'s limit
    assert answer.status_code == 200 and "must be an integer from 1 to" in answer.content.decode()
    client.force_login(personas["viewer"])
    assert client.post(url, {"priority": "1", "max_workers": ""}).status_code == 403
