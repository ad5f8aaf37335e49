import pytest

from extraction.extractors import make_extractor
from jobs.models import Job
from jobs.services import job_cancel, job_start
from jobs.transitions import job_mark_running
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


def test_it_starts_a_job_for_everyone_needing_extraction(api, make_users, personas):
    make_users(3)
    response = api().post("/api/v1/jobs/", {}, format="json")
    assert response.status_code == 201
    job = Job.objects.get()
    body = response.json()
    assert (body["id"], body["status"], body["extractor"], body["total_items"]) == (
        job.id,
        "queued",
        "rules",
        3,
    )
    assert body["created_by"] == "operator" and job.created_by == personas["operator"]
    assert body["selection"] == {"mode": "needing_extraction"}
    assert body["progress"]["pending"] == 3 and body["progress"]["percent"] == 0


def test_it_starts_a_job_for_given_users_with_options(api, make_users):
    make_users(3)
    response = api().post(
        "/api/v1/jobs/",
        {
            "user_ids": ["u002", "u003"],
            "extractor": "test",
            "options": {"error": "x"},
            "chunk_size": 1,
            "max_attempts": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert (job.total_items, job.extractor, job.options["error"], job.chunk_size, job.max_attempts) == (
        2,
        "test",
        "x",
        1,
        2,
    )


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"user_ids": ["u001", "ghost"]}, {"user_ids": ["unknown users: ghost"]}),
        ({"user_ids": []}, {"user_ids": ["This list may not be empty."]}),
        ({"user_ids": "u001"}, {"user_ids": ['Expected a list of items but got type "str".']}),
        (
            {"user_ids": ["x" * 129]},
            {"user_ids": {"0": ["Ensure this field has no more than 128 characters."]}},
        ),
        (
            {"extractor": "magic"},
            {"extractor": ["unknown extractor 'magic' (available: llm, noop, rules, test)"]},
        ),
        (
            {"options": {"speed": 2}},
            {"options.speed": ["unknown option for extractor 'rules' (allowed: none)"]},
        ),
        ({"options": [1]}, {"options": ['Expected a dictionary of items but got type "list".']}),
        ({"chunk_size": 0}, {"chunk_size": ["Ensure this value is greater than or equal to 1."]}),
        ({"max_attempts": "many"}, {"max_attempts": ["A valid integer is required."]}),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, make_users, body, errors):
    make_users(1)
    response = api().post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert not Job.objects.exists()


def test_users_in_an_active_job_are_a_409_naming_them_and_the_job(api, make_users):
    make_users(3)
    first = job_start(user_ids=["u001", "u002"], enqueue=False)
    response = api().post("/api/v1/jobs/", {"user_ids": ["u001", "u002", "u003"]}, format="json")
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"2 users are already in an active job (u001, u002; job {first.id})",
        "user_ids": ["u001", "u002"],
        "job_ids": [first.id],
    }


def test_reading_needs_a_login_and_writing_needs_the_permission(api, make_users):
    make_users(1)
    assert api(None).get("/api/v1/jobs/").status_code == 401
    assert api(None).post("/api/v1/jobs/", {}, format="json").status_code == 401
    assert api("reader").get("/api/v1/jobs/").status_code == 200
    assert api("reader").post("/api/v1/jobs/", {}, format="json").status_code == 403
    assert api("admin").post("/api/v1/jobs/", {}, format="json").status_code == 201


def test_a_logged_in_session_works_too(client, personas, make_users):
    make_users(1)
    client.force_login(personas["operator"])
    assert client.get("/api/v1/jobs/").status_code == 200
    # Session writes need the CSRF token, like every Django form.
    assert client.post("/api/v1/jobs/", {}, content_type="application/json").status_code == 201


def test_the_list_is_newest_first_paginated_and_filterable(api, make_users):
    make_users(4)
    jobs = [
        job_start(user_ids=[f"u00{i}"], extractor="test" if i % 2 else "rules", enqueue=False)
        for i in range(1, 5)
    ]
    job_cancel(jobs[0])
    response = api().get("/api/v1/jobs/?page_size=2")
    body = response.json()
    assert body["count"] == 4
    assert [job["id"] for job in body["results"]] == [jobs[3].id, jobs[2].id]
    assert body["next"].endswith("page=2&page_size=2")
    assert [j["id"] for j in api().get("/api/v1/jobs/?status=cancelled").json()["results"]] == [jobs[0].id]
    assert [j["id"] for j in api().get("/api/v1/jobs/?extractor=test").json()["results"]] == [
        jobs[2].id,
        jobs[0].id,
    ]
    bad = api().get("/api/v1/jobs/?status=sleeping")
    assert bad.status_code == 400
    assert bad.json() == {"status": ['"sleeping" is not a valid choice.']}


def test_the_list_costs_the_same_queries_for_many_jobs(api, make_users, django_assert_num_queries):
    make_users(30)
    for i in range(1, 31):
        job_start(user_ids=[f"u{i:03d}"], enqueue=False)
    client = api()
    with django_assert_num_queries(5):  # token, permissions (the user's, its groups'), count, page
        assert len(client.get("/api/v1/jobs/?page_size=30").json()["results"]) == 30


def test_a_job_shows_its_progress(api, make_users):
    make_users(3)
    job = job_start(user_ids=["u001", "u002", "u003"], chunk_size=2, enqueue=False)
    job_drain(job.id)
    body = api("reader").get(f"/api/v1/jobs/{job.id}/").json()
    assert body["status"] == "completed"
    assert body["progress"]["succeeded"] == 3 and body["progress"]["total_batches"] == 2
    assert api().get("/api/v1/jobs/999/").status_code == 404


def test_progress_answers_304_while_nothing_changed(api, make_users):
    make_users(4)
    job = job_start(user_ids=["u001", "u002", "u003", "u004"], extractor="test", chunk_size=2, enqueue=False)
    client = api("reader")
    first = client.get(f"/api/v1/jobs/{job.id}/progress/")
    assert first.status_code == 200
    assert first.json()["status"] == "queued"
    etag = first["ETag"]
    assert etag.startswith('W/"')
    again = client.get(f"/api/v1/jobs/{job.id}/progress/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    job_mark_running(job.id)
    job.refresh_from_db()
    process_one_chunk(job, make_extractor("test"))
    changed = client.get(f"/api/v1/jobs/{job.id}/progress/", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed.json()["succeeded"] == 2
    assert changed["ETag"] != etag


def test_progress_costs_a_fixed_number_of_queries(api, make_users, running_job, django_assert_num_queries):
    job = running_job(make_users(6), error="bad", permanent=True, fail_users=["u001"])
    process_one_chunk(job, make_extractor("test", job.options))
    chunk_claim(job)
    client = api("reader")
    # token, permissions (the user's, its groups'), the job with its running items, throughput,
    # top errors
    with django_assert_num_queries(6):
        body = client.get(f"/api/v1/jobs/{job.id}/progress/").json()
    assert (body["succeeded"], body["failed"], body["running"]) == (1, 1, 2)


def test_cancel_resume_and_retry_failed(api, make_users, running_job):
    job = running_job(make_users(3), error="bad", permanent=True, fail_users=["u002"])
    client = api()
    cancelled = client.post(f"/api/v1/jobs/{job.id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/jobs/{job.id}/cancel/")
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"job {job.id} is cancelled; only queued or running jobs can be cancelled"
    }
    resumed = client.post(f"/api/v1/jobs/{job.id}/resume/")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert client.post(f"/api/v1/jobs/{job.id}/retry-failed/").status_code == 409  # still active
    job_drain(job.id)
    retry = client.post(f"/api/v1/jobs/{job.id}/retry-failed/")
    assert retry.status_code == 201
    assert (retry.json()["parent"], retry.json()["total_items"]) == (job.id, 1)
    assert client.post("/api/v1/jobs/999/cancel/").status_code == 404


def test_actions_need_the_permission(api, make_users):
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    for action in ("cancel", "resume", "retry-failed"):
        assert api("reader").post(f"/api/v1/jobs/{job.id}/{action}/").status_code == 403
        assert api(None).post(f"/api/v1/jobs/{job.id}/{action}/").status_code == 401
    assert api().get(f"/api/v1/jobs/{job.id}/cancel/").status_code == 405


def test_items_are_listed_with_their_errors_in_cursor_pages(api, make_users, failing_job):
    job = failing_job(make_users(5), ["u002", "u004"], error="no data")
    client = api("reader")
    failed = client.get(f"/api/v1/jobs/{job.id}/items/?status=failed").json()
    assert [(i["user_id"], i["status"], i["error"], i["attempts"]) for i in failed["results"]] == [
        ("u002", "failed", "no data", 1),
        ("u004", "failed", "no data", 1),
    ]
    page = client.get(f"/api/v1/jobs/{job.id}/items/?page_size=3").json()
    assert [i["user_id"] for i in page["results"]] == ["u001", "u002", "u003"]
    rest = client.get(page["next"]).json()
    assert [i["user_id"] for i in rest["results"]] == ["u004", "u005"] and rest["next"] is None
    assert client.get(f"/api/v1/jobs/{job.id}/items/?status=lost").status_code == 400
    assert client.get("/api/v1/jobs/999/items/").status_code == 404


def test_writes_are_throttled(api, make_users, settings):
    settings.API_WRITE_RATE = "2/minute"
    make_users(1)
    client = api()
    job = job_start(user_ids=["u001"], enqueue=False)
    assert client.post(f"/api/v1/jobs/{job.id}/resume/").status_code == 200
    assert client.post(f"/api/v1/jobs/{job.id}/resume/").status_code == 200
    throttled = client.post(f"/api/v1/jobs/{job.id}/resume/")
    assert throttled.status_code == 429
    assert "Request was throttled" in throttled.json()["detail"]
    assert client.get(f"/api/v1/jobs/{job.id}/").status_code == 200  # reads are not throttled


def test_a_start_over_everyone_takes_every_user_not_only_those_needing_extraction(api, make_users):
    make_users(3)
    job_drain(job_start(enqueue=False).id)  # all three extracted: nobody needs extraction now
    client = api("operator")
    assert client.post("/api/v1/jobs/", {}, format="json").json()["total_items"] == 0
    started = client.post("/api/v1/jobs/", {"everyone": True, "extractor": "rules"}, format="json")
    assert (started.status_code, started.json()["total_items"]) == (201, 3)
    assert Job.objects.get(id=started.json()["id"]).selection == {"mode": "all"}
    both = client.post("/api/v1/jobs/", {"everyone": True, "user_ids": ["u001"]}, format="json")
    assert both.status_code == 400
    assert both.json() == {"everyone": ["every user, or the users named: not both"]}
