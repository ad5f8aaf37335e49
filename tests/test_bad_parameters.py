"""Hostile query parameters, cursors, pages and ids: a 4xx that says why, never a 500."""

import base64
from urllib.parse import quote

import pytest

from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db
HUGE = "9" * 25  # beyond 64 bits
BEYOND_BIGINT = str(2**63)  # 19 digits, one past the largest id


def forged_cursor(query: str) -> str:
    return quote(base64.b64encode(query.encode()).decode())


@pytest.fixture
def job(make_users):
    make_users(3)
    job = job_start(user_ids=["u001", "u002", "u003"], enqueue=False)
    job_drain(job.id)
    return job


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=0001-01-01T00:00:00", "since"),
        ("until=0001-01-01T00:00:00Z", "until"),
        ("since=9999-12-31T23:59:59-12:00", "since"),
        ("since=yesterday", "since"),
        ("user=%00", "user"),
        ("type=" + "x" * 65, "type"),
        ("category=conversion%00", "category"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/api/v1/events/", "/api/v1/events/export.csv"])
def test_bad_event_filters_are_400_naming_the_field(api, job, endpoint, query, field):
    response = api("reader").get(f"{endpoint}?{query}")
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()


@pytest.mark.parametrize(
    "query",
    [
        "cursor=garbage",
        "cursor=" + forged_cursor("p=abc"),
        "cursor=" + forged_cursor(f"p={HUGE}"),
        "cursor=" + forged_cursor("p=-5&r=1"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/api/v1/events/", "/api/v1/jobs/{job}/items/"])
def test_forged_cursors_are_404_invalid_cursor(api, job, endpoint, query):
    response = api("reader").get(endpoint.format(job=job.id) + "?" + query)
    assert response.status_code == 404, response.content[:300]
    assert response.json() == {"detail": "Invalid cursor"}


@pytest.mark.parametrize("endpoint", ["/api/v1/events/", "/api/v1/jobs/{job}/items/"])
def test_a_forged_cursors_huge_offset_is_clamped_past_every_row(api, job, endpoint):
    """DRF caps a cursor's offset (at its offset_cutoff) instead of handing the database a number
    beyond 64 bits: the page after id 1 is then empty, where offset 0 has rows."""
    url = endpoint.format(job=job.id) + "?cursor="
    assert api("reader").get(url + forged_cursor("o=0&p=1")).json()["results"]  # rows after id 1
    response = api("reader").get(url + forged_cursor(f"o={HUGE}&p=1"))
    assert response.status_code == 200, response.content[:300]
    assert (response.json()["next"], response.json()["results"]) == (None, [])


@pytest.mark.parametrize("query", [f"page={HUGE}", "page=-1", "page=0", "page=abc"])
def test_absurd_pages_are_404_invalid_page(api, job, query):
    response = api("reader").get(f"/api/v1/jobs/?{query}")
    assert response.status_code == 404, response.content[:300]
    assert response.json() == {"detail": "Invalid page."}


def test_an_absurd_page_size_is_clamped_to_the_largest(api, job, monkeypatch):
    from eventproject.api import NumberedPages

    job_drain(job_start(user_ids=["u001"], enqueue=False).id)  # two jobs, one page of one
    monkeypatch.setattr(NumberedPages, "max_page_size", 1)
    response = api("reader").get(f"/api/v1/jobs/?page_size={HUGE}")
    assert response.status_code == 200, response.content[:300]
    assert (response.json()["count"], len(response.json()["results"])) == (2, 1)


@pytest.mark.parametrize("job_id", [HUGE, BEYOND_BIGINT, "-1", "1e3", "０１"])
@pytest.mark.parametrize("suffix", ["", "progress/", "items/", "stream/"])
def test_ids_that_cannot_exist_are_404(api, job_id, suffix):
    response = api("admin").get(f"/api/v1/jobs/{job_id}/{suffix}")
    assert response.status_code == 404


@pytest.mark.parametrize("action", ["cancel/", "resume/", "retry-failed/"])
def test_actions_on_huge_ids_are_404(api, action):
    assert api("admin").post(f"/api/v1/jobs/{BEYOND_BIGINT}/{action}").status_code == 404


@pytest.mark.parametrize("user_id", ["%00", "a%00b", "x" * 129, "%1b%5b31m"])
def test_user_ids_that_cannot_exist_are_404(api, user_id):
    assert api("admin").get(f"/api/v1/users/{user_id}/").status_code == 404
    assert api("admin").get(f"/api/v1/users/{user_id}/events/").status_code == 404


ADMIN_BAD_IDS = ["abc", HUGE, BEYOND_BIGINT, "1%00", "%E2%91%A0"]
UNDELETABLE = {"jobs/job", "jobs/jobitem"}  # nobody deletes jobs in the admin: 403 before any lookup


@pytest.mark.parametrize(
    "model", ["jobs/job", "jobs/jobitem", "extraction/behavior", "extraction/extractedevent"]
)
def test_the_admin_answers_bad_object_ids_with_no_such_object(client, personas, model):
    client.force_login(personas["admin"])
    for object_id in ADMIN_BAD_IDS:
        for view in ("change/", "history/", "delete/"):
            response = client.get(f"/admin/{model}/{object_id}/{view}")
            if view == "delete/" and model in UNDELETABLE:
                assert response.status_code == 403, (object_id, view)
            else:  # to the index, with "… doesn't exist. Perhaps it was deleted?"
                assert (response.status_code, response.get("Location")) == (302, "/admin/"), (
                    object_id,
                    view,
                )


@pytest.mark.parametrize("object_id", ["%00", "a%00", "x" * 300])
@pytest.mark.parametrize("model", ["extraction/userprofile", "extraction/extractionstate"])
def test_the_admin_answers_bad_text_ids_with_no_such_object(client, personas, model, object_id):
    client.force_login(personas["admin"])
    response = client.get(f"/admin/{model}/{object_id}/change/")
    assert response.status_code == 302 and response["Location"] == "/admin/"


@pytest.mark.parametrize("action", ["cancel", "resume", "retry-failed"])
def test_admin_job_actions_on_huge_ids_are_404(client, personas, action):
    client.force_login(personas["admin"])
    assert client.post(f"/admin/jobs/job/{HUGE}/{action}/").status_code == 404


def test_admin_lists_take_hostile_filters(client, personas, job):
    client.force_login(personas["admin"])
    for url in [
        f"/admin/jobs/jobitem/?job={HUGE}",
        f"/admin/jobs/jobitem/?job={BEYOND_BIGINT}",
        "/admin/jobs/jobitem/?job=abc",
        "/admin/extraction/behavior/?q=%00",
        "/admin/extraction/userprofile/?q=u%00",
        "/admin/jobs/jobitem/?q=%00",
        f"/admin/jobs/job/?p={HUGE}",
    ]:
        assert client.get(url).status_code == 200, url


def test_admin_list_filters_lose_nul_characters_as_search_terms_do(client, personas, job):
    """PostgreSQL refuses NUL in text: a filter's value with one was a 500 there."""
    client.force_login(personas["admin"])
    for url, found in [
        ("/admin/jobs/job/?status__exact=%00completed", 1),
        ("/admin/jobs/job/?extractor=%00rules", 1),
        ("/admin/jobs/jobitem/?status__exact=%00succeeded", 3),
    ]:
        page = client.get(url)
        assert (page.status_code, page.context["cl"].result_count) == (200, found), url
