"""The admin in a real browser (Debian's Chromium driven by Playwright), against a live server and a
running qcluster: start a job with typed options and watch it finish with its pictures, estimate one,
cancel one, retry failed users, import a file and follow it to its report, and all of it in Chinese.

Screenshots land in tests/output/<test>/. Without Chromium these tests are skipped, saying how to
install it; in CI (REQUIRE_BROWSER=1) its absence fails the run instead.
"""

import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect, sync_playwright

from extraction.models import DataImport, ExtractedEvent
from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.cluster import Cluster, wait_for
from tests.fake_openai import PERSONALITIES
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
    settings.IMPORTS_DIR = tmp_path / "imports"  # the live server stores uploads where the cluster reads
    started = Cluster(
        tmp_path / "cluster.log",
        Q_WORKERS="2",
        JOBS_LEASE_SECONDS="5",
        IMPORTS_DIR=str(settings.IMPORTS_DIR),
        IMPORTS_BATCH_ROWS="200",
    )
    yield started
    started.stop()


@pytest.fixture
def page(live_server, request, monkeypatch):
    """A logged-in admin page in headless Chromium, whose language is the test's parameter (English
    unless `indirect` says otherwise); saves a screenshot when the test ends."""
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    User.objects.create_superuser("boss", "boss@example.com", "secret-pw")
    out = OUTPUT / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(
            viewport={"width": 1280, "height": 900}, locale=getattr(request, "param", "en-US")
        )
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
    expect(page.locator("fieldset[data-extractor=llm]")).to_be_hidden()  # only the chosen one's options
    page.check("input[name=who][value=needing]")
    page.fill("#id_test__seconds_per_user", "0.03")
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
    assert page.locator("[data-progressbar]").get_attribute("aria-valuenow") == "100.0"
    # The page reloads once the job has ended: its pictures show the whole run.
    expect(page.locator("svg.chart-throughput rect.chart-bar").first).to_be_visible()
    assert page.locator("svg.chart-throughput rect.chart-bar").count() >= 2
    expect(page.locator("svg.chart-mix")).to_be_visible()
    expect(page.locator("[data-throughput-label]")).to_have_text("Average throughput")
    assert float(page.locator('[data-field="throughput_per_second"]').inner_text()) > 0
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
        f"Job {job.id} completed: 18 users succeeded, 2 failed.", timeout=60_000
    )
    expect(page.locator("[data-error-list]")).to_have_text("2 × model refused")
    page.screenshot(path=page.out / "with-failures.png", full_page=True)
    page.click("#job-retry")
    expect(page.locator(".messagelist")).to_contain_text("to retry the failed users")
    retry = Job.objects.get(parent=job)
    assert retry.total_items == 2
    # The retry fails the same way (the extractor still refuses those two), and says so.
    expect(page.locator("[data-outcome]")).to_have_text(
        f"Job {retry.id} completed: 0 users succeeded, 2 failed.", timeout=60_000
    )


def test_the_start_form_offers_typed_options_and_an_estimate(page, live_server, make_users):
    make_users(40, behaviors=6)
    page.goto(f"{live_server.url}/admin/jobs/job/add/")
    page.select_option("#id_extractor", "llm")
    expect(page.locator("fieldset[data-extractor=llm]")).to_be_visible()
    expect(page.locator("fieldset[data-extractor=test]")).to_be_hidden()
    assert page.locator("#id_llm__temperature").get_attribute("type") == "number"
    page.fill("#id_llm__model", "qwen-plus")
    page.fill("#id_llm__token_budget", "2000")
    page.check("input[name=who][value=needing]")
    page.click("#job-estimate-button")
    estimate = page.locator("[data-estimate]")
    expect(estimate).to_be_visible()
    expect(page.locator('[data-estimate-field="users"]')).to_have_text("40")
    assert int(page.locator('[data-estimate-field="calls"]').inner_text()) >= 1
    assert page.locator("#id_llm__model").input_value() == "qwen-plus"  # the form kept what was typed
    assert not Job.objects.exists()
    page.screenshot(path=page.out / "typed-options-and-estimate.png", full_page=True)
    page.fill("#id_llm__temperature", "5")
    page.click("input[name=_start]")
    expect(page.locator(".field-llm__temperature .errorlist")).to_contain_text("less than or equal to 2")
    assert not Job.objects.exists()


def test_the_pictures_of_a_user_and_of_the_events(page, live_server, make_users):
    from django.core.management import call_command

    from jobs.worker.drain import job_drain

    call_command("generate_sample_data", users=30, verbosity=0)
    job_drain(job_start(enqueue=False).id)
    user_id = sorted(ExtractedEvent.objects.filter(category="conversion").values_list("user_id", flat=True))[
        0
    ]
    page.goto(f"{live_server.url}/admin/extraction/userprofile/{user_id}/change/")
    timeline = page.locator("svg.chart-timeline")
    expect(timeline).to_be_visible()
    assert (
        timeline.locator("rect.timeline-event").count()
        == ExtractedEvent.objects.filter(user_id=user_id).count()
    )
    page.locator("#timeline").screenshot(path=page.out / "user-timeline.png")
    page.screenshot(path=page.out / "user-page.png", full_page=True)
    timeline.locator("rect.timeline-event").first.click()
    assert page.evaluate("location.hash").startswith("#e-")
    page.goto(f"{live_server.url}/admin/extraction/extractedevent/")
    expect(page.locator("#event-counts svg.chart-bars").first).to_be_visible()
    expect(page.locator("#event-counts")).to_contain_text(
        f"Counts of the {ExtractedEvent.objects.count()} events"
    )
    page.screenshot(path=page.out / "event-counts.png", full_page=True)


def test_an_operator_imports_a_file_and_follows_it_to_its_report(page, live_server, cluster, tmp_path):
    rows = ["user_id,event_time,action,item,duration,app,media,poi,price,page_url"]
    rows += [
        f"u{n % 40},2024-06-0{1 + n % 9} 10:{n // 60 % 60:02d}:{n % 60:02d},browse,P{n},3,,,,,"
        for n in range(3000)
    ]
    rows.insert(101, "u1,not a time,browse,P1,3,,,,,")
    rows.insert(2001, ",2024-06-01 10:00:00,browse,P1,3,,,,,")
    path = tmp_path / "行为日志.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    page.goto(f"{live_server.url}/admin/extraction/dataimport/add/")
    page.check("input[name=kind][value=behaviors]")
    page.set_input_files("#id_upload", str(path))
    page.screenshot(path=page.out / "upload-form.png", full_page=True)
    page.click("input[name=_import]")
    expect(page.locator(".messagelist")).to_contain_text("queued: a cluster imports it in the background")
    outcome = page.locator("[data-outcome]")
    expect(outcome).to_have_text(
        "behaviors: read 3002, imported 3000, updated 0, duplicates 0, rejected 2", timeout=60_000
    )
    report = page.locator("[data-report]")
    expect(report).to_contain_text("行为日志.csv:102: unparseable timestamp 'not a time'")
    expect(report).to_contain_text("行为日志.csv:2002: missing user_id")
    assert page.locator("[data-progressbar]").get_attribute("aria-valuenow") == "100.0"
    page.screenshot(path=page.out / "import-completed.png", full_page=True)
    assert DataImport.objects.get().status == "completed"


@pytest.mark.parametrize("page", ["zh-CN"], indirect=True)
def test_the_admin_in_chinese(page, live_server, cluster, make_users):
    make_users(60)
    job = job_start(extractor="test", chunk_size=5, options={"seconds_per_user": 0.02})
    page.goto(f"{live_server.url}/admin/")
    expect(page.locator("#site-name")).to_contain_text("管理")  # Django's own words
    expect(page.locator("body")).to_contain_text("任务")  # the project's: its apps and models
    page.goto(f"{live_server.url}/admin/jobs/job/{job.id}/change/")
    expect(page.locator("#job-progress h2")).to_have_text("进度")
    expect(page.locator("[data-outcome]")).to_have_text(
        f"任务 {job.id} 已完成：60 个用户成功，0 个失败。", timeout=60_000
    )
    expect(page.locator("svg.chart-throughput rect.chart-bar").first).to_be_visible()  # reloaded, ended
    expect(page.locator("#job-charts")).to_contain_text("吞吐量随时间变化")
    expect(page.locator("[data-throughput-label]")).to_have_text("平均吞吐量")
    page.screenshot(path=page.out / "job-zh.png", full_page=True)
    page.goto(f"{live_server.url}/admin/jobs/job/add/")
    expect(page.locator("h1")).to_have_text("启动抽取任务")
    page.select_option("#id_extractor", "llm")
    expect(page.locator("fieldset[data-extractor=llm] h2")).to_have_text("llm 抽取器的选项")
    page.check("input[name=who][value=needing]")
    page.click("#job-estimate-button")
    expect(page.locator("[data-estimate] h2")).to_have_text("估算")
    page.screenshot(path=page.out / "start-form-zh.png", full_page=True)
    page.goto(f"{live_server.url}/admin/jobs/job/")
    expect(page.locator("#result_list")).to_contain_text("已完成")
    page.screenshot(path=page.out / "job-list-zh.png", full_page=True)


@pytest.mark.parametrize("page", ["en-US", "zh-CN"], indirect=True)
def test_an_llm_jobs_page_says_what_was_adapted_to_its_endpoint(page, live_server, llm_server, make_users):
    """Rendered on the page, then redrawn by its script from the progress it polls."""
    llm_server.personality = PERSONALITIES["openai-reasoning"]()
    make_users(4, behaviors=3)
    job = job_start(extractor="llm", options={"model": "o4-mini"}, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "completed" and job.reasoning_tokens > 0
    page.goto(f"{live_server.url}/admin/jobs/job/{job.id}/change/")
    expect(page.locator('[data-field="reasoning_tokens"]')).to_have_text(f"{job.reasoning_tokens:,}")
    expect(page.locator("[data-outcome]")).to_be_visible()  # the script drew all of it, the LLM row too
    adapted = page.locator("[data-adapted] li")
    if page.evaluate("navigator.language").startswith("zh"):
        expect(page.locator('[data-field="llm"]')).to_have_text(
            f"{llm_server.url} 上的 o4-mini，回答格式为 json_schema"
        )
        expect(adapted).to_have_text(
            ["拒绝了 max_tokens：改为发送 max_completion_tokens", "拒绝了 temperature：不再发送"]
        )
    else:
        expect(page.locator('[data-field="llm"]')).to_have_text(
            f"o4-mini at {llm_server.url}, answers asked as json_schema"
        )
        expect(adapted).to_have_text(
            [
                "refused max_tokens: sends max_completion_tokens instead",
                "refused temperature: sends nothing instead",
            ]
        )
    page.screenshot(path=page.out / "llm-job.png", full_page=True)
