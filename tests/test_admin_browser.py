"""The admin in a real browser (Debian's Chromium driven by Playwright), against a live server and a
running qcluster: start a job and watch it finish, cancel one, retry failed users.

Screenshots land in tests/output/<test>/. Without Chromium these tests are skipped, saying how to
install it; in CI (REQUIRE_BROWSER=1) its absence fails the run instead.
"""

import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect, sync_playwright

from jobs.models import Job
from jobs.services import job_start
from tests.cluster import Cluster, wait_for
from tests.tools import executable, unavailable

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
if not executable(CHROMIUM):
    pytestmark.append(
        unavailable(
            f"the admin's browser tests need Chromium at {CHROMIUM}: install it with "
            "`sudo apt-get install chromium` (Debian/Ubuntu), or point CHROMIUM at a Chromium binary",
            required_by="REQUIRE_BROWSER",
        )
    )
OUTPUT = Path(__file__).parent / "output"
# The flags a sandboxed headless Chromium needs here (no network beyond loopback, running as root).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def cluster(transactional_db, tmp_path, settings):
    settings.JOBS_DRAIN_TASKS = 4
    started = Cluster(tmp_path / "cluster.log", Q_WORKERS="2", JOBS_LEASE_SECONDS="5")
    yield started
    started.stop()


@pytest.fixture
def page(live_server, request, monkeypatch):
    """A logged-in admin page in headless Chromium; saves a screenshot when the test ends."""
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    User.objects.create_superuser("boss", "boss@example.com", "secret-pw")
    out = OUTPUT / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(30_000)
        tab.on("dialog", lambda dialog: dialog.accept())  # the confirmation of cancel / retry
        tab.goto(f"{live_server.url}/admin/login/")
        tab.fill("#id_username", "boss")
        tab.fill("#id_password", "secret-pw")
        tab.click("input[type=submit]")
        expect(tab.locator("#site-name")).to_be_visible()
        tab.out = out
        yield tab
        tab.screenshot(path=out / "last.png", full_page=True)
        browser.close()


def percent(tab) -> float:
    text = tab.locator('[data-field="percent"]').inner_text()
    return float(text) if re.fullmatch(r"[\d.]+", text) else -1.0


def test_an_operator_starts_a_job_and_watches_it_complete(page, live_server, cluster, make_users):
    make_users(300)
    page.goto(f"{live_server.url}/admin/jobs/job/add/")
    page.screenshot(path=page.out / "start-form.png", full_page=True)
    page.select_option("#id_extractor", "test")
    page.check("input[name=who][value=needing]")
    page.fill("#id_options", '{"seconds_per_user": 0.03}')
    page.fill("#id_chunk_size", "10")
    page.click("input[name=_start]")
    expect(page.locator(".messagelist")).to_contain_text("Started job")
    job = Job.objects.get()
    assert job.total_items == 300

    seen = set()

    def moved_to_the_end():
        seen.add(percent(page))
        return 100.0 in seen

    wait_for(moved_to_the_end, timeout=60, what="the bar to reach 100 %", interval=0.2)
    assert any(0 < value < 100 for value in seen), f"the bar never showed a step between 0 and 100: {seen}"
    outcome = page.locator("[data-outcome]")
    expect(outcome).to_have_text(f"Job {job.id} completed: 300 users succeeded, 0 failed.")
    assert page.locator("[data-bar]").evaluate("el => el.style.width") == "100%"
    page.screenshot(path=page.out / "completed.png", full_page=True)
    page.goto(f"{live_server.url}/admin/jobs/job/")
    expect(page.locator("#result_list")).to_contain_text("completed")
    page.screenshot(path=page.out / "job-list.png", full_page=True)


def test_an_operator_cancels_a_running_job(page, live_server, cluster, make_users):
    make_users(400)
    job = job_start(extractor="test", chunk_size=5, options={"seconds_per_user": 0.05})
    page.goto(f"{live_server.url}/admin/jobs/job/{job.id}/change/")
    wait_for(lambda: 0 < percent(page) < 100, timeout=60, what="the job to be under way", interval=0.2)
    page.screenshot(path=page.out / "running.png", full_page=True)
    page.click("#job-cancel")
    expect(page.locator(".messagelist")).to_contain_text(f"Job {job.id} is cancel")
    expect(page.locator("[data-outcome]")).to_contain_text(f"Job {job.id} was cancelled:", timeout=30_000)
    job.refresh_from_db()
    assert job.status == "cancelled" and 0 < job.succeeded_items < 400
    expect(page.locator("#job-cancel")).to_have_count(0)
    expect(page.locator("#job-resume")).to_be_visible()


def test_an_operator_retries_the_failed_users(page, live_server, cluster, make_users):
    make_users(20)
    job = job_start(
        extractor="test",
        options={"error": "model refused", "permanent": True, "fail_users": ["u003", "u007"]},
    )
    page.goto(f"{live_server.url}/admin/jobs/job/{job.id}/change/")
    expect(page.locator("[data-outcome]")).to_have_text(
        f"Job {job.id} completed: 18 users succeeded, 2 failed."
    )
    expect(page.locator("[data-error-list]")).to_have_text("2 × model refused")
    page.screenshot(path=page.out / "with-failures.png", full_page=True)
    page.click("#job-retry")
    expect(page.locator(".messagelist")).to_contain_text("to retry the failed users")
    retry = Job.objects.get(parent=job)
    assert retry.total_items == 2
    # The retry fails the same way (the extractor still refuses those two), and says so.
    expect(page.locator("[data-outcome]")).to_have_text(
        f"Job {retry.id} completed: 0 users succeeded, 2 failed."
    )
