"""Least privilege: reads need model permissions, the same in the API and the admin, through groups."""

import pytest
from django.contrib.auth.models import Group

from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


@pytest.fixture
def extracted(make_users):
    """Two users with events, and a finished job over them."""
    make_users(2)
    job = job_start(enqueue=False)
    job_drain(job.id)
    return job


def job_reads(job_id: int) -> list[str]:
    return [
        "/api/v1/jobs/",
        f"/api/v1/jobs/{job_id}/",
        f"/api/v1/jobs/{job_id}/progress/",
        f"/api/v1/jobs/{job_id}/items/",
        f"/api/v1/jobs/{job_id}/stream/",
        "/api/v1/events/extract/progress",
    ]


RESULT_READS = [
    "/api/v1/users/u001/",
    "/api/v1/users/u001/events/",
    "/api/v1/events/",
    "/api/v1/events/export.csv",
    "/api/v1/events/export.jsonl",
]


def test_the_migrations_create_the_four_groups_with_their_permissions(db):
    perms = {
        group.name: sorted(f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all())
        for group in Group.objects.prefetch_related("permissions__content_type")
    }
    assert perms == {
        "operators": [
            "extraction.add_dataimport",
            "extraction.view_dataimport",
            "jobs.add_job",
            "jobs.add_schedule",
            "jobs.change_job",
            "jobs.change_schedule",
            "jobs.delete_schedule",
            "jobs.view_job",
            "jobs.view_schedule",
        ],
        "analysts": [
            "extraction.view_behavior",
            "extraction.view_extractedevent",
            "extraction.view_extractionstate",
            "extraction.view_userprofile",
        ],
        "viewers": ["jobs.view_job", "jobs.view_schedule"],
        "integrators": [
            "webhooks.add_endpoint",
            "webhooks.change_delivery",
            "webhooks.change_endpoint",
            "webhooks.delete_endpoint",
            "webhooks.view_delivery",
            "webhooks.view_endpoint",
        ],
    }


def test_an_account_without_permissions_reads_nothing_in_the_api(api, extracted):
    client = api("nobody")
    for url in [*job_reads(extracted.id), *RESULT_READS]:
        assert client.get(url).status_code == 403, url
    assert client.post("/api/v1/jobs/", {}, format="json").status_code == 403
    assert api(None).get("/api/v1/events/export.csv").status_code == 401


def test_a_viewer_sees_jobs_and_progress_but_no_user_data(api, extracted):
    client = api("viewer")
    for url in job_reads(extracted.id):
        assert client.get(url).status_code == 200, url
    for url in RESULT_READS:
        assert client.get(url).status_code == 403, url
    assert client.post(f"/api/v1/jobs/{extracted.id}/retry-failed/").status_code == 403


def test_an_analyst_reads_and_exports_results_but_not_jobs(api, extracted):
    client = api("analyst")
    for url in RESULT_READS:
        assert client.get(url).status_code == 200, url
    for url in job_reads(extracted.id):
        assert client.get(url).status_code == 403, url
    assert client.post("/api/v1/jobs/", {}, format="json").status_code == 403


@pytest.mark.parametrize(("persona", "expected"), [("operator", 403), ("analyst", 405)])
def test_a_write_to_a_read_only_endpoint_needs_its_read_permissions(api, extracted, persona, expected):
    """Endpoints that write nothing ask their read permissions of every method: who may not read them
    learns nothing from a write either, and who may is told the method is not allowed."""
    for url in RESULT_READS:
        assert api(persona).post(url, {}, format="json").status_code == expected, url


def test_an_operator_runs_jobs_but_reads_no_user_data(api, make_users):
    make_users(2)
    client = api("operator")
    started = client.post("/api/v1/jobs/", {"user_ids": ["u001"]}, format="json")
    assert started.status_code == 201
    job_id = started.json()["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    assert client.get(f"/api/v1/jobs/{job_id}/items/").status_code == 200
    for url in RESULT_READS:
        assert client.get(url).status_code == 403, url
    # The synchronous legacy endpoint answers events: it needs their permission too.
    legacy = client.post("/api/v1/events/extract", {"user_ids": ["u002"]}, format="json")
    assert legacy.status_code == 403 and legacy.json()["code"] == 403
    assert not Job.objects.filter(items__user_id="u002").exists()


ADMIN_JOB_PAGES = ["/admin/jobs/job/", "/admin/jobs/job/{job}/change/", "/admin/jobs/jobitem/"]
ADMIN_DATA_PAGES = [
    "/admin/extraction/userprofile/",
    "/admin/extraction/userprofile/u001/change/",
    "/admin/extraction/behavior/",
    "/admin/extraction/extractedevent/",
    "/admin/extraction/extractionstate/",
]


@pytest.mark.parametrize(
    ("persona", "jobs", "data"),
    [("nobody", 403, 403), ("viewer", 200, 403), ("analyst", 403, 200), ("operator", 200, 403)],
)
def test_the_admin_grants_what_the_api_grants(client, personas, extracted, persona, jobs, data):
    client.force_login(personas[persona])
    for url in ADMIN_JOB_PAGES:
        assert client.get(url.format(job=extracted.id)).status_code == jobs, url
    for url in ADMIN_DATA_PAGES:
        assert client.get(url).status_code == data, url
    start = client.get("/admin/jobs/job/add/").status_code
    assert start == (200 if persona == "operator" else 403)


def test_a_users_page_shows_only_what_the_account_may_see(client, personas, extracted, db):
    from django.contrib.auth.models import Permission

    analyst = personas["analyst"]
    client.force_login(analyst)
    page = client.get("/admin/extraction/userprofile/u001/change/").content.decode()
    assert 'id="behaviors"' in page and 'id="events"' in page
    # Profiles alone: the page opens without the behaviours and events.
    analyst.groups.clear()
    analyst.user_permissions.set(Permission.objects.filter(codename="view_userprofile"))
    page = client.get("/admin/extraction/userprofile/u001/change/").content.decode()
    assert 'id="behaviors"' not in page and 'id="events"' not in page
    assert "Your account may not see behaviours." in page and "may not see events" in page


def test_job_items_link_to_profiles_only_for_those_who_may_open_them(client, personas, extracted):
    profile_link = 'href="/admin/extraction/userprofile/u001/change/"'
    client.force_login(personas["viewer"])
    page = client.get(f"/admin/jobs/jobitem/?job={extracted.id}").content.decode()
    assert "u001" in page and profile_link not in page
    client.force_login(personas["reader"])
    assert profile_link in client.get(f"/admin/jobs/jobitem/?job={extracted.id}").content.decode()
