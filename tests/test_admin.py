"""The admin without a browser: permissions, the start form, query counts, the user page."""

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


@pytest.fixture
def watcher(db):
    """Staff who may look at jobs but not start, cancel, resume or retry them."""
    user = User.objects.create_user("watcher", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "view_userprofile"]))
    return user


def test_a_staff_user_without_job_permissions_sees_no_start_form_and_no_buttons(client, watcher, make_users):
    make_users(2)
    job = job_start(user_ids=["u001", "u002"], enqueue=False)
    client.force_login(watcher)
    listing = client.get("/admin/jobs/job/").content.decode()
    assert f'href="/admin/jobs/job/{job.id}/change/"' in listing
    assert "/admin/jobs/job/add/" not in listing
    assert 'value="cancel_selected"' not in listing
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert 'id="job-progress"' in page
    assert "job-cancel" not in page and "job-retry" not in page and "job-resume" not in page
    assert client.get("/admin/jobs/job/add/").status_code == 403
    assert client.post(f"/admin/jobs/job/{job.id}/cancel/").status_code == 403
    assert Job.objects.get().status == "queued"


def test_an_operator_sees_the_buttons_the_status_allows(client, personas, make_users, failing_job):
    make_users(3)
    running = job_start(user_ids=["u001"], enqueue=False)
    done = failing_job(["u002", "u003"], ["u003"])
    client.force_login(personas["operator"])
    page = client.get(f"/admin/jobs/job/{running.id}/change/").content.decode()
    assert "job-cancel" in page and "job-retry" not in page
    page = client.get(f"/admin/jobs/job/{done.id}/change/").content.decode()
    assert "job-retry" in page and "job-cancel" not in page and "job-resume" not in page


def test_cancel_resume_and_retry_through_the_admin(client, personas, make_users, running_job):
    job = running_job(make_users(2), error="x", permanent=True, fail_users=["u002"])
    client.force_login(personas["operator"])
    response = client.post(f"/admin/jobs/job/{job.id}/cancel/", follow=True)
    assert f"Job {job.id} is cancelled." in response.content.decode()
    assert client.get(f"/admin/jobs/job/{job.id}/cancel/").status_code == 405
    cap = client.post(f"/admin/jobs/job/{job.id}/resume/", {"max_total_tokens": "²"}, follow=True)
    assert "must be a whole number of tokens" in cap.content.decode()  # a digit int() refuses
    client.post(f"/admin/jobs/job/{job.id}/resume/")
    job_drain(job.id)
    response = client.post(f"/admin/jobs/job/{job.id}/retry-failed/", follow=True)
    retry = Job.objects.latest("id")
    assert retry.parent_id == job.id and retry.total_items == 1
    assert f"Started job {retry.id} to retry the failed users." in response.content.decode()
    again = client.post(f"/admin/jobs/job/{job.id}/cancel/", follow=True).content.decode()
    assert "only queued or running jobs can be cancelled" in again
    before = Job.objects.values().get(id=job.id)
    response = client.post(f"/admin/jobs/job/{job.id}/explode/")  # no such action
    assert (response.status_code, response["Location"]) == (302, f"/admin/jobs/job/{job.id}/explode/change/")
    assert Job.objects.values().get(id=job.id) == before  # nothing was done


def test_the_start_form_starts_a_job_through_the_service(client, personas, make_users):
    make_users(3)
    client.force_login(personas["operator"])
    assert 'name="who"' in client.get("/admin/jobs/job/add/").content.decode()
    response = client.post(
        "/admin/jobs/job/add/",
        {
            "extractor": "rules",
            "who": "list",
            "user_ids": "u001, u003\nu001",
            "options": "{}",
            "chunk_size": "2",
        },
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/admin/jobs/job/{job.id}/change/"
    assert (sorted(job.items.values_list("user_id", flat=True)), job.chunk_size, job.created_by.username) == (
        ["u001", "u003"],
        2,
        "operator",
    )


def test_the_start_form_can_start_every_user(client, personas, make_users):
    make_users(2)
    job_drain(job_start(enqueue=False).id)  # nobody needs extraction now
    client.force_login(personas["operator"])
    assert "Every user, extracted before or not" in client.get("/admin/jobs/job/add/").content.decode()
    form = {"extractor": "rules", "who": "everyone", "options": "{}"}
    estimate = client.post("/admin/jobs/job/add/", {**form, "_estimate": "1"}).content.decode()
    assert '<td data-estimate-field="users">2</td>' in estimate
    client.post("/admin/jobs/job/add/", form)
    job = Job.objects.latest("id")
    assert (job.selection, job.total_items) == ({"mode": "all"}, 2)


def test_the_start_form_takes_a_file(client, personas, make_users):
    from django.core.files.uploadedfile import SimpleUploadedFile

    make_users(3)
    client.force_login(personas["operator"])
    upload = SimpleUploadedFile("ids.txt", b"user_id\nu002\n# skip\nu003\n")
    client.post(
        "/admin/jobs/job/add/", {"extractor": "rules", "who": "file", "users_file": upload, "options": ""}
    )
    assert sorted(Job.objects.get().items.values_list("user_id", flat=True)) == ["u002", "u003"]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"who": "list", "user_ids": "u001 ghost"}, "user_ids", "unknown users: ghost"),
        ({"who": "list", "user_ids": " "}, "user_ids", "Paste at least one user id."),
        ({"who": "file"}, "users_file", "Choose a file."),
        (
            {"who": "needing", "extractor": "llm", "llm__temperature": "3"},
            "llm__temperature",
            "less than or equal to 2",
        ),
        (
            {"who": "needing", "extractor": "llm", "llm__max_concurrency": "many"},
            "llm__max_concurrency",
            "Enter a whole number.",
        ),
        (  # refused by the extractor itself, shown on its field
            {"who": "needing", "extractor": "llm", "llm__timeout": "3000"},
            "llm__timeout",
            "but a chunk is sure of only",
        ),
        ({"who": "needing", "extractor": "magic"}, "extractor", "Select a valid choice."),
    ],
)
def test_the_start_form_shows_errors_on_its_fields(client, personas, make_users, data, field, message):
    make_users(1)
    client.force_login(personas["operator"])
    response = client.post("/admin/jobs/job/add/", {"extractor": "rules", **data})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(message in error for error in errors[field]), errors
    assert not Job.objects.exists()


def test_the_start_form_links_to_the_job_holding_busy_users(client, personas, make_users):
    make_users(2)
    first = job_start(user_ids=["u001"], enqueue=False)
    client.force_login(personas["operator"])
    response = client.post(
        "/admin/jobs/job/add/", {"extractor": "rules", "who": "list", "user_ids": "u001 u002"}
    )
    page = response.content.decode()
    assert "1 users are already in an active job (u001; job" in page
    assert f'<a href="/admin/jobs/job/{first.id}/change/">job {first.id}</a>' in page
    assert Job.objects.count() == 1


def list_queries(client, count: int, make_users) -> int:
    for i in range(count):
        job_start(user_ids=make_users(1, prefix=f"n{count}-{i}-"), enqueue=False)
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/admin/jobs/job/").status_code == 200
    return len(queries)


def test_the_job_list_costs_the_same_queries_whatever_the_number_of_jobs(client, personas, make_users):
    client.force_login(personas["admin"])
    assert list_queries(client, 3, make_users) == list_queries(client, 40, make_users)


def test_a_users_page_shows_behaviours_next_to_events_linked_to_each_other(client, personas, make_users):
    make_users(1, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    client.force_login(personas["admin"])
    page = client.get("/admin/extraction/userprofile/u001/change/").content.decode()
    from extraction.models import Behavior

    ids = list(Behavior.objects.order_by("occurred_at").values_list("id", flat=True))
    assert "Behaviours (3)" in page and "Events (2)" in page
    assert (
        f'<tr id="b-{ids[0]}">' in page
        and f'<a href="#b-{ids[1]}">{ids[1]}</a> <a href="#b-{ids[2]}">' in page
    )
    assert '<a href="#e-2">#2</a>' in page  # a behaviour links to the event it went into
    assert "succeeded" in page


@pytest.mark.parametrize("user_id", ["user_001", "dealer/42", "a_2Fb"])
def test_a_users_page_and_the_links_to_it_work_for_ids_the_admin_quotes(client, personas, user_id):
    """The admin quotes `_` and `/` in keys: the links must too, and the page must unquote."""
    import re
    from datetime import UTC, datetime

    from extraction.extractors import BehaviorRecord
    from extraction.services import behaviors_insert

    behaviors_insert([BehaviorRecord(user_id, "purchase", datetime(2026, 1, 1, tzinfo=UTC), item="X9")])
    job_drain(job_start(enqueue=False).id)
    client.force_login(personas["admin"])
    items = client.get("/admin/jobs/jobitem/").content.decode()
    (link,) = re.findall(r'href="(/admin/extraction/userprofile/[^"]+/change/)"', items)
    page = client.get(link)
    assert page.status_code == 200
    assert "Behaviour (1)" in page.content.decode() and "may not see" not in page.content.decode()


def test_data_is_searchable_by_user_id(client, personas, make_users):
    make_users(3)
    client.force_login(personas["admin"])
    for url in ("/admin/extraction/userprofile/", "/admin/extraction/behavior/", "/admin/jobs/jobitem/"):
        page = client.get(url, {"q": "u002"}).content.decode()
        assert "u002" in page and "u001" not in page, url


def test_deleting_profiles_in_the_admin_takes_their_events_and_states(client, personas, make_users):
    from extraction.models import Behavior, ExtractedEvent, ExtractionState, UserProfile

    make_users(3, behaviors=3)
    job_drain(job_start(enqueue=False).id)
    assert ExtractedEvent.objects.count() == 6 and ExtractionState.objects.count() == 3
    client.force_login(personas["admin"])
    response = client.post(
        "/admin/extraction/userprofile/",
        {"action": "delete_selected", "_selected_action": ["u001", "u002"], "post": "yes"},
    )
    assert response.status_code == 302
    response = client.post("/admin/extraction/userprofile/u003/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not UserProfile.objects.exists()
    assert not (
        ExtractedEvent.objects.exists() or ExtractionState.objects.exists() or Behavior.objects.exists()
    )


@pytest.mark.parametrize(
    "listing",
    ["behavior", "userprofile", "extractedevent", "extractionstate", "jobitem"],
)
def test_a_user_id_search_finds_that_id_exactly_on_its_index(client, personas, make_users, listing):
    """Django's "=" search compared case-insensitively (UPPER(user_id) = UPPER(…)): every row read at
    each search, and U001 found u001, another user."""
    make_users(2)
    job_drain(job_start(user_ids=["u001", "u002"], enqueue=False).id)
    app = "jobs" if listing == "jobitem" else "extraction"
    client.force_login(personas["admin"])
    with CaptureQueriesContext(connection) as queries:
        found = client.get(f"/admin/{app}/{listing}/?q=+u001+").context["cl"].result_list
    assert {row.user_id for row in found} == {"u001"}
    searched = [query["sql"] for query in queries if "u001" in query["sql"]]
    assert searched and not any("UPPER(" in sql or " LIKE " in sql for sql in searched), searched
    assert not client.get(f"/admin/{app}/{listing}/?q=U001").context["cl"].result_list
