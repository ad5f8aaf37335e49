"""Schedules in the admin: operators make and pause them, errors show on their fields, a schedule's
page lists its runs with their jobs' outcomes; the `schedule` command does the same."""

import pytest
from django.core.management.base import CommandError
from django.utils import timezone

from jobs.models import Job, Schedule, ScheduleRun
from jobs.schedules import schedule_create, schedule_pause, schedules_run_due
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db

FORM = {
    "name": "nightly",
    "cron": "0 3 * * *",
    "users": "needing_extraction",
    "user_ids": "",
    "extractor": "rules",
    "options": "{}",
    "priority": "4",
    "max_workers": "",
    "active": "on",
}


def test_an_operator_makes_a_schedule_in_the_admin_and_sees_its_next_run(client, personas):
    client.force_login(personas["operator"])
    response = client.post("/admin/jobs/schedule/add/", FORM, follow=True)
    assert response.status_code == 200
    schedule = Schedule.objects.get()
    assert (schedule.cron, schedule.priority, schedule.created_by) == ("0 3 * * *", 4, personas["operator"])
    assert timezone.localtime(schedule.next_run_at).hour == 3
    listing = client.get("/admin/jobs/schedule/").content.decode()
    assert "nightly" in listing and "0 3 * * *" in listing
    page = client.get(f"/admin/jobs/schedule/{schedule.id}/change/").content.decode()
    assert "Asia/Shanghai" in page and "No run yet." in page


def test_bad_fields_show_on_the_form(client, personas):
    client.force_login(personas["operator"])
    page = client.post(
        "/admin/jobs/schedule/add/",
        {**FORM, "cron": "0 3 * *", "users": "list", "options": '{"nope": 1}'},
    ).content.decode()
    assert "A cron expression has five fields" in page
    assert "give the users of the list" in page
    assert "unknown option for extractor" in page
    assert not Schedule.objects.exists()
    schedule_create(name="nightly", cron="0 3 * * *")
    page = client.post("/admin/jobs/schedule/add/", FORM).content.decode()
    assert "a schedule named &#x27;nightly&#x27; exists" in page and Schedule.objects.count() == 1


def test_a_schedules_page_lists_its_runs_with_their_jobs_outcomes(client, personas, make_users):
    make_users(2)
    schedule = schedule_create(name="nightly", cron="0 3 * * *", users="list", user_ids=["u001"])
    Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())
    schedules_run_due()
    job = Job.objects.get()
    job_drain(job.id)
    client.force_login(personas["viewer"])
    page = client.get(f"/admin/jobs/schedule/{schedule.id}/change/").content.decode()
    assert f'href="/admin/jobs/job/{job.id}/change/"' in page and "job-status-completed" in page
    assert "started" in page and f"job {job.id} over 1 users" in page
    listing = client.get("/admin/jobs/schedule/").content.decode()
    assert "job-status-completed" in listing
    assert client.get("/admin/jobs/schedule/add/").status_code == 403  # viewers only look
    job_page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert f'href="/admin/jobs/schedule/{schedule.id}/change/"' in job_page


def test_schedules_are_paused_and_resumed_with_actions(client, personas):
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    client.force_login(personas["operator"])
    client.post("/admin/jobs/schedule/", {"action": "pause_selected", "_selected_action": [schedule.id]})
    schedule.refresh_from_db()
    assert (schedule.active, schedule.next_run_at) == (False, None)
    client.post("/admin/jobs/schedule/", {"action": "resume_selected", "_selected_action": [schedule.id]})
    schedule.refresh_from_db()
    assert schedule.active and schedule.next_run_at > timezone.now()


def test_one_schedule_paused_is_said_in_the_singular(client, personas):
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    client.force_login(personas["operator"])
    answer = client.post(
        "/admin/jobs/schedule/", {"action": "pause_selected", "_selected_action": [schedule.id]}, follow=True
    )
    assert "Paused 1 schedule." in answer.content.decode()


@pytest.mark.parametrize(
    "broken",
    [{"extractor": "retired"}, {"users": "list", "user_ids": ["u1", "u2", "u3"]}],
    ids=["extractor since removed", "list longer than the limit lowered since"],
)
def test_a_schedule_that_no_longer_passes_its_checks_can_still_be_paused(
    client, personas, api, settings, broken
):
    """Pausing re-checked everything: the action answered 500 and the API 400, and it kept starting
    jobs (each refused) with nobody able to stop it but by deleting it."""
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    Schedule.objects.filter(id=schedule.id).update(**broken)
    settings.JOBS_MAX_USER_IDS = 2
    client.force_login(personas["operator"])
    answer = client.post(
        "/admin/jobs/schedule/", {"action": "pause_selected", "_selected_action": [schedule.id]}, follow=True
    )
    assert answer.status_code == 200 and "Paused 1 schedule." in answer.content.decode()
    assert Schedule.objects.values_list("active", "next_run_at").get() == (False, None)
    answer = client.post(
        "/admin/jobs/schedule/", {"action": "resume_selected", "_selected_action": [schedule.id]}, follow=True
    )
    assert answer.status_code == 200 and '<li class="warning">Nightly: ' in answer.content.decode()  # why
    assert not Schedule.objects.get().active
    Schedule.objects.filter(id=schedule.id).update(active=True)
    patched = api("operator").patch(f"/api/v1/schedules/{schedule.id}/", {"active": False}, format="json")
    assert patched.status_code == 200 and not Schedule.objects.get().active


@pytest.mark.parametrize(
    "broken",
    [{"extractor": "retired"}, {"users": "list", "user_ids": ["u1", "u2", "u3"]}],
    ids=["extractor since removed", "list longer than the limit lowered since"],
)
def test_the_form_pauses_a_schedule_that_no_longer_passes_its_checks(client, personas, settings, broken):
    """Its checks ran over every field: "extractor: This field is required", and no pause."""
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    Schedule.objects.filter(id=schedule.id).update(**broken)
    settings.JOBS_MAX_USER_IDS = 2
    client.force_login(personas["operator"])
    page = client.get(f"/admin/jobs/schedule/{schedule.id}/change/")
    sent = as_the_browser_sends(page.context["adminform"].form)
    del sent["active"]  # unticked
    answer = client.post(f"/admin/jobs/schedule/{schedule.id}/change/", sent)
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    assert Schedule.objects.values_list("active", "next_run_at").get() == (False, None)
    sent["name"] = "renamed"  # anything more is checked whole
    answer = client.post(f"/admin/jobs/schedule/{schedule.id}/change/", sent)
    assert answer.status_code == 200 and answer.context["adminform"].form.errors


def test_a_form_saves_what_it_changed_not_a_pause_made_meanwhile(client, personas):
    """The form sent every field back as the page had it: a pause made while the page was open was undone."""
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    client.force_login(personas["operator"])
    page = client.get(f"/admin/jobs/schedule/{schedule.id}/change/")
    sent = as_the_browser_sends(page.context["adminform"].form)
    schedule_pause(schedule)  # someone else, meanwhile
    answer = client.post(f"/admin/jobs/schedule/{schedule.id}/change/", {**sent, "name": "nightly at 3"})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    assert Schedule.objects.values_list("name", "active", "next_run_at").get() == (
        "nightly at 3",
        False,
        None,
    )


def as_the_browser_sends(form) -> dict:
    """The fields of a rendered form (and their hidden initial values) as a browser posts them."""
    sent = {}
    for field in form:
        value = field.value()
        if field.field.show_hidden_initial:
            sent[field.html_initial_name] = "" if value is None else value
        if value is not False and value is not None:
            sent[field.html_name] = "on" if value is True else value
    return sent


@pytest.mark.parametrize(
    "options",
    ["[" * 100_000 + "]" * 100_000, '{"model": ' + "9" * 5000 + "}", '{"model": "\\ud800"}'],
    ids=["too deep to decode", "a number past int()'s limit", "a lone surrogate"],
)
def test_options_the_api_refuses_are_refused_on_the_form_not_a_500(client, personas, options):
    client.force_login(personas["operator"])
    answer = client.post("/admin/jobs/schedule/add/", {**FORM, "extractor": "llm", "options": options})
    assert answer.status_code == 200 and answer.context["adminform"].form.errors["options"]
    assert not Schedule.objects.exists()


def test_the_schedule_command_adds_lists_changes_and_deletes(run, make_users):
    make_users(1)
    out, _ = run("schedule", "add", "nightly", "--cron", "0 3 * * *", "--users", "u001", "--priority", "high")
    assert out.startswith("schedule 'nightly' added; next run ") and "03:00" in out
    schedule = Schedule.objects.get()
    assert (schedule.users, schedule.user_ids, schedule.priority) == ("list", ["u001"], 4)
    assert "nightly: 0 3 * * * (Asia/Shanghai) list rules; next " in run("schedule", "list")[0]
    run("schedule", "set", "nightly", "--all-users", "--cron", "30 4 * * *")
    schedule.refresh_from_db()
    assert (schedule.users, schedule.user_ids, schedule.cron) == ("all", [], "30 4 * * *")
    assert run("schedule", "pause", "nightly")[0] == "schedule 'nightly' paused\n"
    Schedule.objects.filter(id=schedule.id).update(active=True, next_run_at=timezone.now())
    schedules_run_due()
    assert "started  job " in run("schedule", "runs", "nightly")[0]
    with pytest.raises(CommandError, match="--cron: A cron expression has five fields"):
        run("schedule", "add", "other", "--cron", "0 3 * *")
    with pytest.raises(CommandError, match="--users: item 0 is empty or longer than 128 characters"):
        run("schedule", "add", "other", "--cron", "0 3 * * *", "--users", "x" * 200)
    with pytest.raises(CommandError, match="--options 'nope': unknown option"):
        run("schedule", "add", "other", "--cron", "0 3 * * *", "--options", '{"nope": 1}')
    with pytest.raises(CommandError, match="--options must be a JSON object"):
        run("schedule", "add", "other", "--cron", "0 3 * * *", "--options", "[]")
    with pytest.raises(CommandError, match="no schedule named 'ghost'"):
        run("schedule", "pause", "ghost")
    run("schedule", "delete", "nightly")
    assert not Schedule.objects.exists() and Job.objects.get().schedule is None


def test_schedule_names_hold_no_control_characters_and_the_command_shows_them_escaped(run, api, make_users):
    """A name like "nightly\x1b[2J" was accepted, and `schedule list` cleared the operator's screen."""
    refused = api("operator").post(
        "/api/v1/schedules/", {"name": "red\x1b[31m", "cron": "0 4 * * *"}, format="json"
    )
    assert (refused.status_code, refused.json()) == (400, {"name": ["control characters are not allowed"]})
    with pytest.raises(CommandError, match="^name: control characters are not allowed"):
        run("schedule", "add", "a\tb", "--cron", "0 3 * * *")
    make_users(1)
    schedule = schedule_create(name="nightly", cron="0 3 * * *", users="list", user_ids=["u001"])
    Schedule.objects.filter(id=schedule.id).update(name="old\x1b]0;pwned\x07", next_run_at=timezone.now())
    schedules_run_due()
    ScheduleRun.objects.update(message="started \x1b[2J")
    listed, runs = run("schedule", "list")[0], run("schedule", "runs", "old\x1b]0;pwned\x07")[0]
    assert "\x1b" not in listed + runs and "\x07" not in listed
    assert "old\\x1b]0;pwned\\x07: 0 3 * * *" in listed and "started \\x1b[2J" in runs


def test_the_schedule_screens_speak_chinese_to_a_chinese_browser(client, personas):
    schedule_create(name="nightly", cron="0 3 * * *")
    client.force_login(personas["operator"])
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}
    listing = client.get("/admin/jobs/schedule/", **zh).content.decode()
    for words in ("暂停所选计划", "恢复所选计划", "下次运行时间", "需要抽取的用户"):
        assert words in listing, words
    page = client.get("/admin/jobs/schedule/add/", **zh).content.decode()
    assert "Cron 表达式" in page and "按 Asia/Shanghai 时间" in page


def test_a_schedules_runs_are_listed_within_a_limit(run):
    run("schedule", "add", "nightly", "--cron", "0 3 * * *")
    for limit in ("0", "-1", str(10**20)):
        with pytest.raises(CommandError, match=f"^--limit must be from 1 to 10,000, got {limit}"):
            run("schedule", "runs", "nightly", "--limit", limit)


def test_a_change_refused_as_it_is_saved_is_said_not_a_500(client, personas, monkeypatch):
    """The form is checked first, the row changed after: a schedule deleted, or a name taken, between
    the two raised from save_model, a 500."""
    from jobs.admin import schedules as admin_schedules
    from jobs.errors import JobStateError

    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    client.force_login(personas["operator"])
    sent = as_the_browser_sends(
        client.get(f"/admin/jobs/schedule/{schedule.id}/change/").context["adminform"].form
    )

    def deleted_meanwhile(schedule, **changes):
        raise JobStateError("the schedule was deleted")

    monkeypatch.setattr(admin_schedules, "schedule_update", deleted_meanwhile)
    answer = client.post(f"/admin/jobs/schedule/{schedule.id}/change/", {**sent, "name": "x"}, follow=True)
    assert (
        answer.status_code == 200
        and '<li class="error">The schedule was deleted</li>' in answer.content.decode()
    )
