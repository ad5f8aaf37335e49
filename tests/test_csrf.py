"""Every state-changing request a browser session can make is refused without the CSRF token: a
page on another site cannot start, cancel or resume a job, nor upload a file, in an operator's name.
(The test client skips the check unless asked: these clients enforce it.)"""

import re

import pytest
from django.test import Client

from jobs.models import Job
from jobs.services import job_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(personas):
    """An operator's logged-in browser session that checks CSRF like a real request."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas["operator"])
    return client


def token_of(page: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def test_admin_actions_need_the_token(browser, make_users):
    job = job_start(user_ids=make_users(2), extractor="test", enqueue=False)
    for action in ("cancel", "resume", "retry-failed"):
        assert browser.post(f"/admin/jobs/job/{job.id}/{action}/").status_code == 403
    assert browser.post("/admin/jobs/job/add/", {"extractor": "rules", "who": "all"}).status_code == 403
    assert browser.post("/admin/extraction/dataimport/add/", {"kind": "behaviors"}).status_code == 403
    job.refresh_from_db()
    assert (job.status, Job.objects.count()) == ("queued", 1)  # nothing happened

    token = token_of(browser.get(f"/admin/jobs/job/{job.id}/change/").content.decode())
    response = browser.post(f"/admin/jobs/job/{job.id}/cancel/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"  # with the page's own token it works


def test_api_writes_with_a_session_need_the_token(browser, make_users):
    make_users(2)
    assert (
        browser.post("/api/v1/jobs/", {"user_ids": ["u001"]}, content_type="application/json").status_code
        == 403
    )
    job = job_start(user_ids=["u002"], extractor="test", enqueue=False)
    assert browser.post(f"/api/v1/jobs/{job.id}/cancel/").status_code == 403
    assert Job.objects.count() == 1 and Job.objects.get().status == "queued"

    token = browser.get("/admin/").cookies["csrftoken"].value
    response = browser.post(
        "/api/v1/jobs/", {"user_ids": ["u001"]}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201, response.content


def test_api_writes_with_a_token_need_no_csrf(api, make_users):
    """Tokens are not sent by browsers on their own: a forged page cannot use them."""
    make_users(1)
    client = api("operator")
    client.handler.enforce_csrf_checks = True
    assert client.post("/api/v1/jobs/", {"user_ids": ["u001"]}, format="json").status_code == 201
