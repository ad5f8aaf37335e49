"""Schedules over the API: made, read, changed, paused, deleted and their runs listed, with the
permissions of the groups; bad input is a 400 naming each field."""

import pytest
from django.utils import timezone

from jobs.models import Job, JobItem, Schedule
from jobs.schedules import schedule_create, schedules_run_due

pytestmark = pytest.mark.django_db

NIGHTLY = {"name": "nightly", "cron": "0 3 * * *", "priority": "high"}  # as the API takes it
AS_SERVICE = {**NIGHTLY, "priority": 4}


def test_an_operator_makes_a_schedule_and_sees_when_it_runs(api, settings):
    answer = api("operator").post("/api/v1/schedules/", NIGHTLY, format="json")
    assert answer.status_code == 201, answer.json()
    body = answer.json()
    assert (
        body | {"name": "nightly", "cron": "0 3 * * *", "users": "needing_extraction", "priority": "high"}
        == body
    )
    assert (body["active"], body["time_zone"], body["created_by"]) == (True, settings.TIME_ZONE, "operator")
    assert body["next_run_at"].endswith("T03:00:00+08:00") and body["last_run"] is None
    listed = api("viewer").get("/api/v1/schedules/").json()
    assert [schedule["name"] for schedule in listed["results"]] == ["nightly"]


def test_bad_fields_are_named(api):
    client = api("operator")
    answer = client.post(
        "/api/v1/schedules/",
        {"name": "x", "cron": "0 3 * *", "users": "list", "extractor": "nope"},
        format="json",
    )
    assert answer.status_code == 400
    errors = answer.json()
    assert set(errors) == {"cron", "user_ids", "extractor"}
    assert "five fields" in errors["cron"][0] and "unknown extractor" in errors["extractor"][0]
    answer = client.post("/api/v1/schedules/", {"cron": "0 3 * * *", "priority": "top"}, format="json")
    assert answer.status_code == 400 and set(answer.json()) == {"name", "priority"}
    answer = client.post("/api/v1/schedules/", {**NIGHTLY, "options": {"nope": 1}}, format="json")
    assert answer.status_code == 400 and list(answer.json()) == ["options.nope"]
    client.post("/api/v1/schedules/", NIGHTLY, format="json")
    answer = client.post("/api/v1/schedules/", NIGHTLY, format="json")
    assert answer.status_code == 400 and answer.json() == {"name": ["a schedule named 'nightly' exists"]}
    assert Schedule.objects.count() == 1


def test_a_schedule_is_paused_resumed_and_changed_with_patch(api):
    schedule = schedule_create(**AS_SERVICE)
    client = api("operator")
    paused = client.patch(f"/api/v1/schedules/{schedule.id}/", {"active": False}, format="json").json()
    assert (paused["active"], paused["next_run_at"]) == (False, None)
    changed = client.patch(
        f"/api/v1/schedules/{schedule.id}/", {"active": True, "cron": "30 4 * * *"}, format="json"
    ).json()
    assert changed["active"] and changed["next_run_at"].endswith("T04:30:00+08:00")
    answer = client.patch(f"/api/v1/schedules/{schedule.id}/", {"users": "list"}, format="json")
    assert answer.status_code == 400 and list(answer.json()) == ["user_ids"]
    listed = client.patch(
        f"/api/v1/schedules/{schedule.id}/", {"users": "list", "user_ids": ["u1", "u2"]}, format="json"
    ).json()
    assert (listed["users"], listed["user_ids"], listed["user_count"]) == ("list", ["u1", "u2"], 2)


def test_a_schedules_runs_list_its_jobs_with_their_outcome(api, make_users):
    make_users(2)
    schedule = schedule_create(**AS_SERVICE)
    Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())
    schedules_run_due()
    job = Job.objects.get(schedule=schedule)
    runs = api("viewer").get(f"/api/v1/schedules/{schedule.id}/runs/").json()["results"]
    assert [(run["outcome"], run["job"], run["job_status"]) for run in runs] == [
        ("started", job.id, "queued")
    ]
    detail = api("viewer").get(f"/api/v1/schedules/{schedule.id}/").json()
    assert detail["last_run"]["job"] == job.id
    assert api("viewer").get(f"/api/v1/jobs/{job.id}/").json()["schedule"] == schedule.id


def test_deleting_a_schedule_keeps_the_jobs_it_started(api, make_users):
    make_users(1)
    schedule = schedule_create(**AS_SERVICE)
    Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())
    schedules_run_due()
    assert api("operator").delete(f"/api/v1/schedules/{schedule.id}/").status_code == 204
    assert Job.objects.get().schedule is None and not Schedule.objects.exists()


def test_only_those_allowed_see_or_change_schedules(api):
    schedule = schedule_create(**AS_SERVICE)
    url = f"/api/v1/schedules/{schedule.id}/"
    for persona in ("nobody", "analyst", "integrator"):
        assert api(persona).get("/api/v1/schedules/").status_code == 403, persona
    assert api(None).get("/api/v1/schedules/").status_code == 401
    viewer = api("viewer")
    assert viewer.get(url).status_code == 200
    assert viewer.post("/api/v1/schedules/", {**NIGHTLY, "name": "v"}, format="json").status_code == 403
    assert viewer.patch(url, {"active": False}, format="json").status_code == 403
    assert viewer.delete(url).status_code == 403
    assert api("operator").get("/api/v1/schedules/999/").status_code == 404


def test_making_or_changing_a_schedule_takes_the_right_to_start_jobs(api, personas, client):
    """A schedule starts jobs in its maker's name: schedule rights alone start none."""
    from django.contrib.auth.models import Permission

    schedule = schedule_create(**AS_SERVICE)
    planner = personas["nobody"]
    planner.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="jobs",
            codename__in=["add_schedule", "change_schedule", "delete_schedule", "view_schedule"],
        )
    )
    as_planner = api("nobody")
    assert as_planner.post("/api/v1/jobs/", {}, format="json").status_code == 403
    sneaky = {**NIGHTLY, "name": "sneak", "cron": "* * * * *", "users": "all", "extractor": "llm"}
    assert as_planner.post("/api/v1/schedules/", sneaky, format="json").status_code == 403
    url = f"/api/v1/schedules/{schedule.id}/"
    assert as_planner.patch(url, {"extractor": "llm"}, format="json").status_code == 403
    assert as_planner.get(url).status_code == 200
    client.force_login(planner)
    assert client.get("/admin/jobs/schedule/add/").status_code == 403
    page = client.get(f"/admin/jobs/schedule/{schedule.id}/change/")
    assert page.status_code == 200 and b'name="cron"' not in page.content  # shown, not editable
    assert as_planner.delete(url).status_code == 204
    assert not Schedule.objects.exists() and not Job.objects.exists()


def test_a_patch_switching_to_all_users_drops_the_list(api, make_users):
    schedule = schedule_create(**AS_SERVICE, users="list", user_ids=make_users(2))
    answer = api("operator").patch(f"/api/v1/schedules/{schedule.id}/", {"users": "all"}, format="json")
    assert answer.status_code == 200, answer.json()
    assert (answer.json()["users"], answer.json()["user_ids"]) == ("all", [])


def test_the_schedule_list_costs_the_same_few_queries_however_many_schedules(
    api, make_users, django_assert_max_num_queries
):
    make_users(1)
    client = api("viewer")
    client.get("/api/v1/schedules/")  # the token and the permissions, cached for the user from now on
    for n in range(5):
        schedule = schedule_create(name=f"s{n}", cron="0 3 * * *", users="all")
        Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())
        schedules_run_due()
        Job.objects.update(status="completed")  # over: its user is free for the next schedule's job
        JobItem.objects.update(status="succeeded")
    with django_assert_max_num_queries(8):
        body = client.get("/api/v1/schedules/").json()
    assert [schedule["last_run"]["outcome"] for schedule in body["results"]] == ["started"] * 5
