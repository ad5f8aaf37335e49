import threading
from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from extraction.extractors import ExtractionError, make_extractor
from extraction.models import Behavior, ExtractedEvent, ExtractionState, UserProfile
from extraction.selectors import user_inputs_load, users_needing_extraction
from extraction.services import (
    BehaviorRecord,
    Outcome,
    behaviors_insert,
    chunk_extract,
    extraction_failures_record,
    extraction_results_save,
    profiles_delete,
    profiles_upsert,
)
from tests.cluster import wait_for
from tests.plans import SORT_NODE, index_path_plan

pytestmark = pytest.mark.django_db
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


@pytest.fixture
def rules():
    return make_extractor("rules")


def add_behaviors(user_id, *actions, minute=0):
    return behaviors_insert(
        [
            BehaviorRecord(user_id, action, T0.replace(minute=minute + i), item="P7")
            for i, action in enumerate(actions)
        ]
    )


def extract_and_save(extractor, *user_ids):
    outcomes = chunk_extract(user_ids=list(user_ids), extractor=extractor)
    extraction_results_save(outcomes=outcomes, extractor=extractor)
    return outcomes


def test_it_saves_events_in_order_with_the_state(rules):
    add_behaviors("u1", "search", "browse", "browse", "purchase")
    extract_and_save(rules, "u1")
    events = list(ExtractedEvent.objects.filter(user_id="u1"))
    assert [(e.sequence, e.event_type) for e in events] == [
        (1, "search"),
        (2, "browse_model"),
        (3, "purchase"),
    ]
    assert events[1].behavior_ids == list(
        UserProfile.objects.get(user_id="u1")
        .behaviors.filter(action="browse")
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert (events[0].extractor, events[0].extractor_version) == ("rules", rules.version)
    state = ExtractionState.objects.get(user_id="u1")
    assert (state.status, state.event_count, state.extractor) == ("succeeded", 3, "rules")
    assert state.input_version == UserProfile.objects.get(user_id="u1").input_version
    assert state.input_fingerprint == user_inputs_load(["u1"])[0].fingerprint()


def test_a_new_run_replaces_the_previous_events(rules):
    add_behaviors("u1", "search", "purchase")
    extract_and_save(rules, "u1")
    first_ids = set(ExtractedEvent.objects.values_list("id", flat=True))
    add_behaviors("u1", "visit", minute=30)
    extract_and_save(rules, "u1")
    events = ExtractedEvent.objects.filter(user_id="u1")
    assert [e.event_type for e in events] == ["search", "purchase", "place_visit"]
    assert not first_ids & {e.id for e in events}


def test_a_failure_while_saving_leaves_the_old_events(rules, monkeypatch):
    add_behaviors("u1", "search", "purchase")
    extract_and_save(rules, "u1")
    before = list(ExtractedEvent.objects.values_list("id", "event_type"))
    state_before = ExtractionState.objects.values().get(user_id="u1")
    add_behaviors("u1", "visit", minute=30)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    # The new events are written last, after the old ones were deleted and the state replaced.
    monkeypatch.setattr("extraction.services.copy_rows", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        extract_and_save(rules, "u1")
    assert list(ExtractedEvent.objects.values_list("id", "event_type")) == before
    assert ExtractionState.objects.values().get(user_id="u1") == state_before


def test_a_failed_user_keeps_the_events_of_its_last_success(rules):
    add_behaviors("u1", "purchase")
    extract_and_save(rules, "u1")
    extraction_results_save(
        outcomes=[Outcome("u1", None, ExtractionError("model timed out"))], extractor=rules
    )
    extraction_failures_record(errors={"u1": "model timed out"})
    assert ExtractedEvent.objects.filter(user_id="u1").count() == 1
    state = ExtractionState.objects.get(user_id="u1")
    assert (state.status, state.error, state.event_count) == ("failed", "model timed out", 1)


def test_a_user_the_extractor_left_out_gets_an_error(rules, monkeypatch):
    add_behaviors("u1", "purchase")
    add_behaviors("u2", "purchase")
    monkeypatch.setattr(rules, "extract", lambda users, control=None: {"u1": []})
    outcomes = {o.user_id: o for o in chunk_extract(user_ids=["u1", "u2", "nobody"], extractor=rules)}
    assert list(outcomes) == ["u1", "u2", "nobody"]  # one outcome per id, in order
    assert outcomes["u1"].result == []
    assert "returned no result" in outcomes["u2"].result.message
    assert not outcomes["u2"].result.permanent
    assert (outcomes["nobody"].user, outcomes["nobody"].result.message) == (None, "unknown user: no profile")
    assert outcomes["nobody"].result.permanent


def needing():
    return set(users_needing_extraction().values_list("user_id", flat=True))


def test_users_needing_extraction_follow_their_input(rules):
    add_behaviors("u1", "purchase")
    add_behaviors("u2", "browse")
    assert needing() == {"u1", "u2"}
    extract_and_save(rules, "u1", "u2")
    assert needing() == set()
    add_behaviors("u1", "purchase")  # the same behaviour again: nothing new
    assert needing() == set()
    add_behaviors("u1", "visit", minute=30)
    assert needing() == {"u1"}
    UserProfile.objects.filter(user_id="u2").update(input_version=99)  # e.g. the profile changed
    assert needing() == {"u1", "u2"}


def test_a_failed_user_needs_extraction_again(rules):
    add_behaviors("u1", "purchase")
    extraction_failures_record(errors={"u1": "boom"})
    assert needing() == {"u1"}


def test_a_user_over_the_behaviour_cap_is_not_loaded_and_fails_for_good_naming_the_cap(make_users, settings):
    settings.EXTRACTION_MAX_BEHAVIORS_PER_USER = 5
    make_users(2, behaviors=5)  # at the cap: loaded
    make_users(1, behaviors=6, prefix="big")  # one past it
    loaded = user_inputs_load(["big001", "u001", "u002", "nobody"])
    assert [user.user_id for user in loaded] == ["u001", "u002"]
    assert loaded.over_cap == {"big001"}

    from jobs.services import job_start
    from jobs.worker.drain import job_drain

    job = job_start(user_ids=["u001", "big001", "u002"], chunk_size=3, enqueue=False)
    job_drain(job.id)
    items = {item.user_id: item for item in job.items.all()}
    assert items["big001"].status == "failed" and items["big001"].attempts == 1  # permanent: no retry
    assert items["big001"].error == (
        "more than 5 behaviours, more than a worker may hold for one user "
        "(EXTRACTION_MAX_BEHAVIORS_PER_USER): not extracted; raise the cap to extract this user"
    )
    assert {items["u001"].status, items["u002"].status} == {"succeeded"}
    assert ExtractionState.objects.get(user_id="big001").status == "failed"


def events_of_others(users: int, each: int) -> None:
    """`each` stored events for each of `users` other users (a table big enough to have a plan)."""
    profiles_upsert({f"other{i}": {} for i in range(users)})
    ExtractedEvent.objects.bulk_create(
        ExtractedEvent(
            user_id=f"other{i}",
            sequence=n,
            event_type="browse_model",
            category="engagement",
            starts_at=T0,
            ends_at=T0,
            extractor="rules",
            extractor_version="1",
            created_at=T0,
        )
        for i in range(users)
        for n in range(1, each + 1)
    )


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's planner and statistics")
def test_replacing_events_reads_them_by_the_users_index_while_the_table_has_no_statistics(rules):
    """A new events table has no statistics until autovacuum analyses it: a chunk's delete of its
    users' old events must still read them by the user index, not the whole table each chunk."""
    events_of_others(400, 50)
    users = [f"u{i}" for i in range(150)]
    for user_id in users:
        add_behaviors(user_id, "search", "browse")
    with connection.cursor() as cursor:

        def sequential_scans() -> int:
            cursor.execute(
                "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = %s",
                [ExtractedEvent._meta.db_table],
            )
            return cursor.fetchone()[0]

        before = sequential_scans()
        extract_and_save(rules, *users)
        assert sequential_scans() == before
    assert ExtractedEvent.objects.filter(user_id__in=users).count() == 300
    assert ExtractedEvent.objects.count() == 400 * 50 + 300


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's planner")
def test_a_chunks_behaviours_can_be_read_in_the_indexs_order_without_sorting_them_again(make_users):
    """Each user's log can come in time order from the behaviours' index, so the chunk's rows are not
    sorted again as a whole (at 500 users, 45,000 rows, that sort spilled to disk: the load's largest
    cost)."""
    users = make_users(200, behaviors=10)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Behavior._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        loaded = user_inputs_load(users[:50])
    assert [len(user.behaviors) for user in loaded] == [10] * 50
    plan = index_path_plan(next(q["sql"] for q in queries.captured_queries if "occurred_at" in q["sql"]))
    assert "Index Scan using behavior_natural_key" in plan, plan
    assert not SORT_NODE.search(plan), plan


def test_a_profile_deleted_before_its_chunk_commits_fails_the_commit_writing_nothing(rules):
    add_behaviors("u1", "search", "browse")
    add_behaviors("u2", "search")
    outcomes = chunk_extract(user_ids=["u1", "u2"], extractor=rules)
    profiles_delete(UserProfile.objects.filter(user_id="u2"))
    with pytest.raises(IntegrityError, match="profiles deleted while their chunk ran: u2"):
        extraction_results_save(outcomes=outcomes, extractor=rules)
    assert not ExtractedEvent.objects.exists()
    assert not ExtractionState.objects.exists()


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time: no race")
def test_a_profile_deleted_while_its_chunk_commits_takes_the_chunks_events_with_it(transactional_db, rules):
    """The commit holds its users' profiles until it ends: the delete waits for it and then removes
    the events it wrote, where it would otherwise leave events of a user that no longer exists."""
    add_behaviors("u1", "search", "browse")
    outcomes = chunk_extract(user_ids=["u1"], extractor=rules)
    written, deleted = threading.Event(), []

    def delete() -> None:
        written.wait(timeout=30)
        deleted.append(profiles_delete(UserProfile.objects.filter(user_id="u1")))
        connection.close()

    deleter = threading.Thread(target=delete)
    deleter.start()
    with transaction.atomic():
        extraction_results_save(outcomes=outcomes, extractor=rules)
        written.set()
        wait_for(deleter_blocked, timeout=10, what="the delete waiting for the commit's lock")
    deleter.join(timeout=30)
    assert deleted == [1]
    assert not ExtractedEvent.objects.exists()
    assert not ExtractionState.objects.exists()


def deleter_blocked() -> bool:
    """Whether another session of this database waits for a lock (pg_stat_activity is read once per
    transaction unless its snapshot is cleared)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0
