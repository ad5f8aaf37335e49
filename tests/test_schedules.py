"""Schedules: due times in the configured zone (with and without daylight saving), one run after
any downtime, a skip while the previous job is active, the users each kind of schedule takes, and
one start per due time however many callers race for it."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone

from extraction.extractors import BehaviorRecord
from extraction.services import behaviors_insert
from jobs.cron import CronInvalid, cron_clean, cron_next
from jobs.errors import JobInvalid
from jobs.models import Job, JobItem, Schedule, ScheduleRun
from jobs.schedules import (
    schedule_create,
    schedule_pause,
    schedule_resume,
    schedule_run_if_due,
    schedule_update,
    schedules_run_due,
)
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.threads import at_once
from webhooks.models import Event

SHANGHAI, BERLIN = ZoneInfo("Asia/Shanghai"), ZoneInfo("Europe/Berlin")


def at(zone, *fields) -> datetime:
    return datetime(*fields, tzinfo=zone)


def runs(expression: str, after: datetime, count: int, zone) -> list[str]:
    found = []
    for _ in range(count):
        after = cron_next(expression, after, zone)
        found.append(after.isoformat())
    return found


def test_due_times_in_a_zone_without_daylight_saving_are_its_wall_clock_times():
    assert runs("0 3 * * *", at(SHANGHAI, 2026, 3, 1, 2, 59), 2, SHANGHAI) == [
        "2026-03-01T03:00:00+08:00",
        "2026-03-02T03:00:00+08:00",
    ]
    # Strictly after: a schedule that just ran is not due again at the same time.
    assert cron_next("0 3 * * *", at(SHANGHAI, 2026, 3, 1, 3, 0), SHANGHAI) == at(SHANGHAI, 2026, 3, 2, 3)
    # Monday to Friday at 09:30, across a weekend (2026-03-06 is a Friday).
    assert runs("30 9 * * 1-5", at(SHANGHAI, 2026, 3, 6, 10), 2, SHANGHAI) == [
        "2026-03-09T09:30:00+08:00",
        "2026-03-10T09:30:00+08:00",
    ]


def test_the_configured_zone_is_the_default(settings):
    settings.TIME_ZONE = "Asia/Shanghai"
    # 03:00 in Shanghai is 19:00 UTC the day before.
    assert cron_next("0 3 * * *", datetime(2026, 3, 1, 12, tzinfo=UTC)) == at(SHANGHAI, 2026, 3, 2, 3)


def test_a_time_the_clocks_skip_runs_shifted_by_the_change_once():
    # Berlin, 2026-03-29: 02:00 CET → 03:00 CEST.
    assert runs("30 2 * * *", at(BERLIN, 2026, 3, 28, 12), 3, BERLIN) == [
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    quarter_hours = runs("*/15 * * * *", at(BERLIN, 2026, 3, 29, 1, 40), 6, BERLIN)
    assert quarter_hours == [
        "2026-03-29T01:45:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:15:00+02:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T03:45:00+02:00",
        "2026-03-29T04:00:00+02:00",
    ]


def test_a_time_the_clocks_repeat_runs_once_at_its_first_occurrence():
    # Berlin, 2026-10-25: 03:00 CEST → 02:00 CET, so 02:00–02:59 happens twice.
    assert runs("30 2 * * *", at(BERLIN, 2026, 10, 24, 12), 3, BERLIN) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    assert runs("0 * * * *", at(BERLIN, 2026, 10, 25, 0, 30), 4, BERLIN) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    # Asked from inside the repeated hour (its second pass), the daily run is tomorrow's.
    second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET
    assert cron_next("30 2 * * *", second_pass, BERLIN) == at(BERLIN, 2026, 10, 26, 2, 30)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "Give a cron expression"),
        ("0 3 * *", "five fields"),
        ("0 0 3 * * *", "got 6"),
        ("61 * * * *", "is not a valid cron expression"),
        ("0 0 30 2 *", "never comes"),
        ("R 3 * * *", "Random values"),  # croniter would draw a new minute at each look
        ("0 3 R(1-28) * *", "Random values"),
    ],
)
def test_a_bad_cron_expression_is_refused_saying_why(expression, message):
    with pytest.raises(CronInvalid, match=message):
        cron_clean(expression)


def test_cron_expressions_are_kept_tidy():
    assert cron_clean("  0   3 * * 1-5 ") == "0 3 * * 1-5"
    assert cron_clean("@daily") == "@daily"
    assert cron_clean("0 3 * mar-apr fri") == "0 3 * mar-apr fri"  # names with an r are not random


# The due check ------------------------------------------------------------------------------------
@pytest.fixture
def clock():
    """A frozen clock at 2026-03-01 00:30 in Shanghai; clock.move_to(...) to go on."""
    with time_machine.travel(at(SHANGHAI, 2026, 3, 1, 0, 30), tick=False) as traveller:
        yield traveller


@pytest.fixture
def hourly(clock, personas):
    """An hourly schedule over the users needing extraction, high priority, made by the operator."""
    return schedule_create(name="hourly", cron="0 * * * *", priority=4, created_by=personas["operator"])


@pytest.mark.django_db
def test_a_schedule_starts_its_job_when_due_and_names_itself_on_it(clock, hourly, make_users, personas):
    make_users(3)
    assert hourly.next_run_at == at(SHANGHAI, 2026, 3, 1, 1)
    assert schedules_run_due() == []  # 00:30: not yet
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1, 0, 2))
    (line,) = schedules_run_due()
    run = ScheduleRun.objects.get()
    job = run.job
    assert line == f"schedule 'hourly': started job {job.id} over 3 users"
    assert (run.outcome, run.due_at, job.schedule, job.priority) == ("started", hourly.next_run_at, hourly, 4)
    assert (job.created_by, job.selection, job.total_items) == (
        personas["operator"],
        {"mode": "needing_extraction"},
        3,
    )
    hourly.refresh_from_db()
    assert hourly.next_run_at == at(SHANGHAI, 2026, 3, 1, 2)
    assert schedules_run_due() == []  # claimed: not due again until 02:00


@pytest.mark.django_db
def test_after_downtime_a_schedule_runs_once_not_once_per_missed_time(clock, hourly, make_users):
    make_users(2)
    clock.move_to(at(SHANGHAI, 2026, 3, 4, 7, 20))  # every cluster was down for three days
    assert len(schedules_run_due()) == 1
    assert schedules_run_due() == []
    hourly.refresh_from_db()
    assert hourly.next_run_at == at(SHANGHAI, 2026, 3, 4, 8)
    (run,) = ScheduleRun.objects.all()
    assert run.due_at == at(SHANGHAI, 2026, 3, 1, 1) and run.ran_at == at(SHANGHAI, 2026, 3, 4, 7, 20)


@pytest.mark.django_db
def test_a_run_is_skipped_and_recorded_while_the_previous_job_is_active(clock, hourly, make_users):
    make_users(2)
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1, 0, 1))
    schedules_run_due()
    first = Job.objects.get()
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 2, 0, 1))
    assert schedules_run_due() == [f"schedule 'hourly': skipped job {first.id} is still queued"]
    assert Job.objects.count() == 1
    job_drain(first.id)  # it finishes; the next time, a new job starts
    behaviors_insert([BehaviorRecord("u001", "purchase", datetime(2026, 2, 1, tzinfo=UTC), item="X9")])
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 3, 0, 1))
    schedules_run_due()
    outcomes = list(hourly.runs.order_by("id").values_list("outcome", "job__total_items"))
    assert outcomes == [("started", 2), ("skipped", None), ("started", 1)]  # only u001 changed since


@pytest.mark.django_db
def test_each_kind_of_schedule_takes_its_users(clock, make_users):
    ids = make_users(3)
    job_drain(job_start(enqueue=False).id)  # everyone is extracted: nobody needs it now
    listed = schedule_create(name="a list", cron="0 * * * *", users="list", user_ids=ids[:1])
    everyone = schedule_create(name="b all", cron="0 * * * *", users="all")
    needing = schedule_create(name="c needing", cron="0 * * * *")
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1, 0, 1))
    schedules_run_due()  # in name order
    assert listed.jobs.get().selection == {"mode": "users", "count": 1}
    assert everyone.jobs.get().total_items == 2  # u001 is busy in the list's job
    assert everyone.jobs.get().selection == {"mode": "all"}
    (run,) = needing.runs.all()  # nobody needs extraction: no empty job, no event announcing one
    assert (run.outcome, run.job, run.message) == ("skipped", None, "nobody to process: no job started")
    assert not needing.jobs.exists() and not Event.objects.exists()
    needing.refresh_from_db()
    assert needing.next_run_at == at(SHANGHAI, 2026, 3, 1, 2)


@pytest.mark.django_db
def test_a_refused_start_is_recorded_and_the_schedule_goes_on(clock, make_users):
    make_users(1)
    listed = schedule_create(name="list", cron="0 * * * *", users="list", user_ids=["u001", "ghost"])
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1, 0, 1))
    schedules_run_due()
    (run,) = listed.runs.all()
    assert (run.outcome, run.job) == ("refused", None) and "unknown users: ghost" in run.message
    listed.refresh_from_db()
    assert listed.next_run_at == at(SHANGHAI, 2026, 3, 1, 2)


@pytest.mark.django_db
def test_a_paused_schedule_starts_nothing_and_resumes_from_now(clock, hourly, make_users):
    make_users(1)
    schedule_pause(hourly)
    assert hourly.next_run_at is None
    clock.move_to(at(SHANGHAI, 2026, 3, 2, 5, 10))
    assert schedules_run_due() == []
    schedule_resume(hourly)
    assert hourly.next_run_at == at(SHANGHAI, 2026, 3, 2, 6)  # the times missed while paused are not run
    schedule_update(hourly, cron="30 7 * * *")
    assert hourly.next_run_at == at(SHANGHAI, 2026, 3, 2, 7, 30)


@pytest.mark.django_db
def test_bad_schedules_are_refused_naming_each_field(db):
    with pytest.raises(JobInvalid) as refused:
        schedule_create(
            name=" ",
            cron="0 3 * *",
            users="list",
            user_ids=[],
            extractor="nope",
            priority=3,
            max_workers=0,
        )
    assert set(refused.value.errors) == {"name", "cron", "user_ids", "extractor", "priority", "max_workers"}
    with pytest.raises(JobInvalid, match="user_ids: only a schedule over a list of users names users"):
        schedule_create(name="x", cron="0 3 * * *", user_ids=["u1"])
    with pytest.raises(JobInvalid, match="unknown option"):
        schedule_create(name="x", cron="0 3 * * *", options={"nope": 1})
    schedule_create(name="x", cron="0 3 * * *")
    with pytest.raises(JobInvalid, match="name: a schedule named 'x' exists"):
        schedule_create(name="x", cron="0 4 * * *")
    every_minute_listed = ",".join(map(str, range(60))) + " * * * *"  # valid, 174 characters
    with pytest.raises(JobInvalid, match="cron: at most 100 characters"):
        schedule_create(name="long", cron=every_minute_listed)
    with pytest.raises(JobInvalid, match="cron: at most 100 characters"):
        schedule_update(Schedule.objects.get(name="x"), cron=every_minute_listed)


@pytest.mark.django_db
def test_a_schedules_user_ids_are_checked_and_kept_as_a_jobs_are(db):
    """One home for what a user id may be: a schedule keeps the ids its jobs will get, stripped and
    each once, and refuses what a job would refuse, with the same words."""
    listed = schedule_create(name="l", cron="0 3 * * *", users="list", user_ids=[" u1 ", "u1", "u2", 7])
    assert listed.user_ids == ["u1", "u2", "7"]
    with pytest.raises(JobInvalid) as refused:
        schedule_create(name="m", cron="0 3 * * *", users="list", user_ids=["u1", " ", None, "x" * 129])
    assert refused.value.errors == {
        "user_ids": "item 1 is empty or longer than 128 characters; item 2 is not a string; "
        "item 3 is empty or longer than 128 characters"
    }
    with pytest.raises(JobInvalid, match="user_ids: give the users of the list"):
        schedule_create(name="m", cron="0 3 * * *", users="list", user_ids="u1")


@pytest.mark.django_db
def test_a_change_made_from_an_old_copy_keeps_a_pause_made_meanwhile(clock, hourly):
    """Two people (or a PATCH and a pause) change one schedule at once: each change applies to the
    row as it is, so a paused schedule is never left active with no next run."""
    old_copy = Schedule.objects.get(id=hourly.id)
    schedule_pause(hourly)
    schedule_update(old_copy, priority=Job.Priority.LOW)
    hourly.refresh_from_db()
    assert (hourly.active, hourly.next_run_at, hourly.priority) == (False, None, Job.Priority.LOW)
    schedule_resume(old_copy)  # the old copy still says active
    hourly.refresh_from_db()
    assert (hourly.active, hourly.next_run_at) == (True, at(SHANGHAI, 2026, 3, 1, 1))


@pytest.mark.django_db
def test_switching_users_or_extractor_drops_what_only_the_old_one_needed(clock, make_users, settings):
    listed = schedule_create(name="listed", cron="0 * * * *", users="list", user_ids=make_users(2))
    schedule_update(listed, users="all")
    assert (listed.users, listed.user_ids) == ("all", [])
    llm = schedule_create(name="llm", cron="0 * * * *", extractor="llm", options={"temperature": 0.5})
    assert llm.options == {"temperature": 0.5}  # as given: each job gets the defaults of its day
    schedule_update(llm, extractor="rules")
    assert (llm.extractor, llm.options) == ("rules", {})


@pytest.mark.django_db
def test_a_schedules_jobs_take_the_extractors_defaults_of_their_day(clock, make_users, settings):
    make_users(1)
    settings.EXTRACTION_LLM_MODEL = "model-of-march"
    schedule = schedule_create(name="llm", cron="0 * * * *", users="all", extractor="llm")
    assert schedule.options == {}
    settings.EXTRACTION_LLM_MODEL = "model-of-april"
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1))
    (run,) = [schedule_run_if_due(schedule.id, at(SHANGHAI, 2026, 3, 1, 1))]
    assert run.outcome == "started" and run.job.options["model"] == "model-of-april"


@pytest.mark.django_db(transaction=True)
def test_callers_racing_for_a_due_schedule_start_one_job(make_users):
    """Each round, several threads (each with its own connection, as clusters have) claim the same
    due time at the same instant: one starts the job, the others change nothing."""
    make_users(3)
    schedule = schedule_create(name="race", cron="* * * * *", users="all")
    for round_number in range(4):
        Schedule.objects.filter(id=schedule.id).update(next_run_at=datetime.now(UTC) - timedelta(seconds=1))
        Job.objects.filter(schedule=schedule).update(status="completed")  # the previous run is over
        JobItem.objects.filter(job__schedule=schedule).update(status="succeeded")
        outcomes = at_once(lambda: schedule_run_if_due(schedule.id, datetime.now(UTC)), count=4)
        assert sum(run is not None for run in outcomes) == 1, round_number
    assert schedule.runs.count() == 4 and schedule.jobs.count() == 4
    assert set(schedule.runs.values_list("outcome", flat=True)) == {"started"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # 2026-03-29 02:00 CET → 03:00 CEST: 02:30 does not exist that day.
        (datetime(2026, 3, 28, 12, tzinfo=UTC), ["2026-03-29 03:30", "2026-03-30 02:30", "2026-03-31 02:30"]),
        # 2026-10-25 03:00 CEST → 02:00 CET: 02:30 happens twice that day.
        (
            datetime(2026, 10, 24, 12, tzinfo=UTC),
            ["2026-10-25 02:30", "2026-10-26 02:30", "2026-10-27 02:30"],
        ),
    ],
)
def test_across_a_daylight_saving_change_a_daily_schedule_runs_once_a_day(
    settings, make_users, start, expected
):
    """In Europe/Berlin, due schedules checked every ten minutes for three days from noon UTC."""
    settings.TIME_ZONE = "Europe/Berlin"
    make_users(1)
    with time_machine.travel(start, tick=False) as traveller:
        daily = schedule_create(name="daily", cron="30 2 * * *", users="all")
        for step in range(1, 3 * 24 * 6):
            traveller.move_to(start + timedelta(minutes=10 * step))
            schedules_run_due()
            Job.objects.update(status="completed")  # each run's job is over before the next
    assert [
        f"{run.ran_at.astimezone(BERLIN):%Y-%m-%d %H:%M}" for run in daily.runs.order_by("id")
    ] == expected


@pytest.mark.django_db
def test_a_broken_schedule_does_not_stop_the_others(clock, make_users, caplog):
    make_users(1)
    broken = schedule_create(name="a broken", cron="0 * * * *")
    schedule_create(name="b fine", cron="0 * * * *", users="all")
    Schedule.objects.filter(id=broken.id).update(cron="not cron")  # written by hand, past the checks
    clock.move_to(at(SHANGHAI, 2026, 3, 1, 1, 0, 1))
    assert [line.split(":")[0] for line in schedules_run_due()] == ["schedule 'b fine'"]
    assert f"schedule {broken.id} could not run" in caplog.text


def test_a_start_that_fails_unexpectedly_is_recorded_once_and_the_schedule_moves_on(
    db, make_users, monkeypatch
):
    """A bug in starting the job rolled the claim back: the same due time failed, with a traceback in
    the log, at every heal for ever, and `schedule runs` showed nothing."""
    import jobs.schedules

    make_users(1)
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())

    def broken(**arguments):
        raise UnicodeEncodeError("utf-8", "ab\udcff", 2, 3, "surrogates not allowed")

    monkeypatch.setattr(jobs.schedules, "job_start", broken)
    schedules_run_due()
    assert schedules_run_due() == []
    run = ScheduleRun.objects.get()
    assert (run.outcome, run.message) == (
        "refused",
        "could not start its job (UnicodeEncodeError): see the cluster's log",
    )
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now()
