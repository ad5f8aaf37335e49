"""The predecessor's endpoints, field by field, in its envelope."""

from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection

from eventproject.db import DatabaseNow
from extraction.extractors import make_extractor
from extraction.models import ExtractedEvent
from jobs.models import Job, JobItem
from jobs.services import job_cancel, job_start
from jobs.transitions import job_fail, job_mark_running
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


def test_progress_is_idle_before_any_job(api):
    response = api("reader").get("/api/v1/events/extract/progress")
    assert response.status_code == 200
    assert response.json() == {
        "code": 0,
        "message": "success",
        "data": {
            "status": "idle",
            "job_id": None,
            "total_users": 0,
            "processed_users": 0,
            "success_count": 0,
            "failed_count": 0,
            "current_batch": 0,
            "total_batches": 0,
            "current_user_ids": [],
            "progress_percent": 0.0,
            "estimated_remaining_seconds": None,
            "start_time": None,
            "end_time": None,
            "error_message": None,
        },
    }


def test_start_answers_started_with_the_job(api, make_users):
    make_users(3)
    body = api().post("/api/v1/events/extract/start", {"user_ids": None}, format="json").json()
    job = Job.objects.get()
    assert body == {
        "code": 0,
        "message": "extraction started",
        "data": {"status": "started", "job_id": job.id, "total_users": 3},
    }


def test_start_with_a_list_and_without_a_body(api, make_users):
    make_users(3)
    assert (
        api().post("/api/v1/events/extract/start", {"user_ids": ["u002"]}, format="json").json()["code"] == 0
    )
    assert Job.objects.get().total_items == 1
    job_cancel(Job.objects.get())
    body = api().post("/api/v1/events/extract/start").json()
    assert body["code"] == 0 and body["data"]["total_users"] == 3


def test_a_second_start_while_a_job_runs_is_refused(api, make_users):
    make_users(2)
    first = job_start(user_ids=["u001"], enqueue=False)
    response = api().post("/api/v1/events/extract/start", {"user_ids": ["u002"]}, format="json")
    assert response.status_code == 200
    assert response.json() == {
        "code": 1001,
        "message": f"an extraction job is already running (job {first.id})",
        "data": {"status": "running", "job_id": first.id},
    }
    assert Job.objects.count() == 1


def test_start_errors_keep_the_envelope(api, make_users):
    make_users(1)
    unknown = api().post("/api/v1/events/extract/start", {"user_ids": ["ghost"]}, format="json")
    assert unknown.status_code == 400
    assert unknown.json() == {"code": 400, "message": "user_ids: unknown users: ghost", "data": None}
    bad = api().post("/api/v1/events/extract/start", {"user_ids": "u001"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["message"] == 'user_ids: Expected a list of items but got type "str".'
    items = api().post("/api/v1/events/extract/start", {"user_ids": [None, "u001", ""]}, format="json")
    assert items.json()["message"] == (
        "user_ids: item 0: This field may not be null.; item 2: This field may not be blank."
    )
    anonymous = api(None).post("/api/v1/events/extract/start", {}, format="json")
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "code": 401,
        "message": "Authentication credentials were not provided.",
        "data": None,
    }
    forbidden = api("reader").post("/api/v1/events/extract/start", {}, format="json")
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == 403


def test_progress_of_a_running_job_in_the_old_field_names(api, make_users):
    make_users(5)
    with time_machine.travel(datetime(2026, 5, 1, 9, tzinfo=UTC), tick=False):  # rates need a still clock
        job = job_start(
            user_ids=[f"u00{i}" for i in range(1, 6)], extractor="test", chunk_size=2, enqueue=False
        )
        job_mark_running(job.id)
        job.refresh_from_db()
        process_one_chunk(job, make_extractor("test"))
        chunk_claim(job)
        data = api("reader").get("/api/v1/events/extract/progress").json()["data"]
    job.refresh_from_db()
    assert {k: v for k, v in data.items() if k != "start_time"} == {
        "status": "running",
        "job_id": job.id,
        "total_users": 5,
        "processed_users": 2,
        "success_count": 2,
        "failed_count": 0,
        "current_batch": 2,
        "total_batches": 3,
        "current_user_ids": ["u003", "u004"],
        "progress_percent": 40.0,
        # 2 finished within the first second (rates count at least a second): 2 users/s, 3 left.
        "estimated_remaining_seconds": 2,
        "end_time": None,
        "error_message": None,
    }
    assert data["start_time"] == job.started_at.astimezone().isoformat()


@pytest.mark.parametrize(
    ("finish", "status", "error"),
    [
        (lambda job: job_drain(job.id), "completed", None),
        (lambda job: job_fail(job.id, "401 invalid key"), "failed", "401 invalid key"),
        (lambda job: job_cancel(job), "failed", "job {id} was cancelled"),
    ],
)
def test_progress_of_a_finished_job(api, make_users, finish, status, error):
    make_users(2)
    job = job_start(user_ids=["u001", "u002"], enqueue=False)
    finish(job)
    data = api("reader").get("/api/v1/events/extract/progress").json()["data"]
    assert data["status"] == status
    assert data["error_message"] == (error.format(id=job.id) if error else None)
    assert data["end_time"] is not None


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_two_starts_at_once_start_one_job(api, make_users, monkeypatch):
    """The predecessor ran one job at a time: a start while one is active is code 1001. Two starts
    at once both found none active, and both started (the old front end then saw only one)."""
    import threading

    from jobs.api import legacy

    make_users(2)
    first_checked, first_may_go = threading.Event(), threading.Event()
    latest, answers = legacy.job_latest, {}

    def checked_then_held(**kwargs):
        found = latest(**kwargs)
        if threading.current_thread().name == "first":
            first_checked.set()
            first_may_go.wait(10)
        return found

    monkeypatch.setattr(legacy, "job_latest", checked_then_held)

    def start(user_id):
        answers[user_id] = (
            api("operator")
            .post("/api/v1/events/extract/start", {"user_ids": [user_id]}, format="json")
            .json()
        )
        connection.close()

    first = threading.Thread(target=start, args=("u001",), name="first")
    second = threading.Thread(target=start, args=("u002",), name="second")
    first.start()
    assert first_checked.wait(10)
    second.start()
    second.join(timeout=1)  # with the check and the start under one lock, it waits for the first
    first_may_go.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert answers["u001"]["code"] == 0 and answers["u002"]["code"] == 1001, answers
    assert Job.objects.count() == 1


def test_sync_extract_answers_the_events_of_each_user(api, make_users):
    make_users(2)
    body = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json").json()
    assert body["code"] == 0 and body["message"] == "2 users extracted"
    data = body["data"]
    assert data["job_id"] == Job.objects.get().id
    assert data["failed"] == {}
    assert [e["event_type"] for e in data["events"]["u001"]] == ["purchase", "browse_model"]
    assert data["events"]["u002"][0]["label"] == "购买"


def test_sync_extract_answers_at_most_legacy_sync_max_events(api, make_users, settings):
    """100 users of 10,000 events each came as one 363 MB answer that took 3.9 GB of the web process:
    past the limit the events are saved and the answer says where to read them."""
    settings.LEGACY_SYNC_MAX_EVENTS = 3
    make_users(2)  # two events each
    body = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json").json()
    assert body["code"] == 1004 and "events" not in body["data"], body
    assert body["message"] == (
        "the users have 4 events, more than the 3 answered here (LEGACY_SYNC_MAX_EVENTS): they are saved; "
        "read them a user at a time at /api/v1/users/{id}/events/"
    )
    assert (body["data"]["failed"], Job.objects.get().status, ExtractedEvent.objects.count()) == (
        {},
        "completed",
        4,
    )
    settings.LEGACY_SYNC_MAX_EVENTS = 4
    body = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json").json()
    assert body["code"] == 0 and len(body["data"]["events"]["u002"]) == 2


def test_sync_extract_answers_no_earlier_events_for_a_user_that_failed_now(api, make_users, monkeypatch):
    """A failed user keeps its earlier events (a failure destroys nothing), but they are not this
    run's: its list was answered full beside its error, as if just extracted."""
    from extraction.extractors import ExtractionError
    from extraction.extractors.rules import RulesExtractor

    make_users(2)
    client = api("admin")
    client.post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json")
    extract = RulesExtractor.extract

    def failing_u001(self, users, control=None):
        return {**extract(self, users, control), "u001": ExtractionError("the model said no", permanent=True)}

    monkeypatch.setattr(RulesExtractor, "extract", failing_u001)
    body = client.post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json").json()
    assert body["message"] == "1 users extracted"
    assert body["data"]["failed"] == {"u001": "the model said no"}
    assert body["data"]["events"]["u001"] == [] and len(body["data"]["events"]["u002"]) == 2
    assert ExtractedEvent.objects.filter(user_id="u001").count() == 2  # kept, as in /users/u001/events/


def test_sync_extract_answers_only_once_chunks_another_drain_holds_are_done(api, make_users, monkeypatch):
    """A cluster's heal may ring the job too and take a chunk: the answer waits for it (here its
    drain dies, and the request takes the chunk over when the lease runs out) instead of answering
    'running' with no events."""
    from jobs.api import legacy
    from jobs.services import job_run_here

    def with_a_chunk_held_elsewhere(job, **kwargs):
        job_mark_running(job.id)
        job.refresh_from_db()
        chunk_claim(job, size=1)  # a cluster's drain took u001
        JobItem.objects.filter(job=job, status="running").update(lease_expires_at=DatabaseNow(0.5))
        return job_run_here(job, **kwargs)

    monkeypatch.setattr(legacy, "job_run_here", with_a_chunk_held_elsewhere)
    make_users(3)
    body = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001", "u002", "u003"]}, format="json")
    assert body.json()["code"] == 0, body.json()
    assert sorted(body.json()["data"]["events"]) == ["u001", "u002", "u003"]
    assert all(body.json()["data"]["events"].values()) and Job.objects.get().status == "completed"


def test_sync_extract_refuses_big_lists_and_busy_users(api, make_users, settings):
    settings.LEGACY_SYNC_MAX_USERS = 1
    make_users(2)
    too_many = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001", "u002"]}, format="json")
    assert too_many.status_code == 400
    assert too_many.json()["message"].startswith("user_ids: at most 1 users here")
    job_start(user_ids=["u001"], enqueue=False)
    busy = api("admin").post("/api/v1/events/extract", {"user_ids": ["u001"]}, format="json").json()
    assert busy["code"] == 1002 and "already in an active job" in busy["message"]
    assert api("admin").post("/api/v1/events/extract", {}, format="json").status_code == 400
