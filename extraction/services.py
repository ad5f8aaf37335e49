"""Use cases of the extraction domain: bulk imports' writes (behaviours, profiles), and a chunk's
extraction: chunk_extract loads the users and runs the extractor, writing nothing; the
extraction_results_* functions and extraction_failures_record save what came of it."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from eventproject.db import (
    copy_rows,
    datetime_adapter,
    in_values,
    is_postgresql,
    json_adapter,
    json_text,
    rows_sql,
    staging_table,
)

from .extractors import BehaviorRecord, Control, EventDraft, ExtractionError, Extractor, UserInput, UserResult
from .models import EVENT_COLUMNS, Behavior, ExtractedEvent, ExtractionState, UserProfile
from .selectors import user_inputs_load

BEHAVIOR_COLUMNS = BehaviorRecord._fields[:-1]  # all but the id the database gives
# Their PostgreSQL types, for binary COPY: psycopg formats the rows in C (an import's 200,000 rows:
# 0.7 s of Python against 1.0 s in text, measured here).
BEHAVIOR_TYPES = ("text", "text", "timestamptz", "text", "text", "text", "text", "float8", "jsonb")


# Their PostgreSQL types, for binary COPY (psycopg formats these in C: measured 9 µs an event row
# with the server's share, against 11 µs in text; the server's share is most of it).
EVENT_TYPES = (
    *("text", "int4", "text", "text", "text", "timestamptz", "timestamptz"),
    *("jsonb", "jsonb", "text", "text", "timestamptz"),
)


def behaviors_insert(rows: Sequence[BehaviorRecord]) -> int:
    """Insert new behaviours, ignoring ones already stored; returns how many were new.

    Creates a profile row for users seen for the first time and bumps the input
    version of every user who got a new behaviour, in one transaction.
    """
    if not rows:
        return 0
    now = timezone.now()
    db_datetime, db_json = datetime_adapter(), json_adapter()
    table = Behavior._meta.db_table
    profiles = UserProfile._meta.db_table
    columns = ", ".join(BEHAVIOR_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        staging_table(cursor, "staging_behavior", table, BEHAVIOR_COLUMNS)
        copy_rows(
            cursor,
            "staging_behavior",
            BEHAVIOR_COLUMNS,
            ((*row[:2], db_datetime(row.occurred_at), *row[3:8], db_json(row.extra or {})) for row in rows),
            types=BEHAVIOR_TYPES,
        )
        cursor.execute(
            f"INSERT INTO {profiles} (user_id, attributes, input_version, created_at, updated_at) "
            f"SELECT user_id, '{{}}', 0, %s, %s FROM (SELECT DISTINCT user_id FROM staging_behavior) s "
            f"WHERE 1 = 1 "
            f"ON CONFLICT (user_id) DO NOTHING",
            [db_datetime(now), db_datetime(now)],
        )
        # WHERE 1 = 1: SQLite needs it to parse INSERT … SELECT … ON CONFLICT.
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM staging_behavior WHERE 1 = 1 "
            f"ON CONFLICT DO NOTHING RETURNING user_id"
        )
        inserted = [user_id for (user_id,) in cursor.fetchall()]
        if inserted:
            UserProfile.objects.filter(user_id__in=set(inserted)).update(
                input_version=F("input_version") + 1, updated_at=now
            )
    return len(inserted)


def profiles_upsert(profiles: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Insert new profiles and replace changed attributes; returns (inserted, updated).

    A profile whose attributes are unchanged is left alone, so re-importing a
    file changes nothing. A change bumps the user's input version.
    """
    if not profiles:
        return 0, 0
    now = datetime_adapter()(timezone.now())
    table = UserProfile._meta.db_table
    differs = "IS DISTINCT FROM" if is_postgresql() else "IS NOT"
    with transaction.atomic(), connection.cursor() as cursor:
        staging_table(cursor, "staging_profile", table, ("user_id", "attributes"))
        copy_rows(
            cursor,
            "staging_profile",
            ("user_id", "attributes"),
            ((user_id, json_text(attributes)) for user_id, attributes in profiles.items()),
        )
        cursor.execute(
            f"SELECT count(*) FROM staging_profile s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} p WHERE p.user_id = s.user_id)"
        )
        (inserted,) = cursor.fetchone()
        cursor.execute(
            f"INSERT INTO {table} (user_id, attributes, input_version, created_at, updated_at) "
            f"SELECT user_id, attributes, 1, %s, %s FROM staging_profile WHERE 1 = 1 "
            f"ON CONFLICT (user_id) DO UPDATE SET attributes = excluded.attributes, "
            f"input_version = {table}.input_version + 1, updated_at = excluded.updated_at "
            f"WHERE {table}.attributes {differs} excluded.attributes",
            [now, now],
        )
        written = cursor.rowcount
    return inserted, written - inserted


def profiles_delete(profiles: QuerySet[UserProfile]) -> int:
    """Delete these profiles with what hangs on them (behaviours, events, state); returns how many
    profiles went. They are locked first, as a chunk's commit locks the profiles of the users whose
    events it writes (extraction_results_write): so no commit lands between the delete finding a
    user's events and removing its profile, which would leave events of nobody behind."""
    with transaction.atomic():
        locked = list(profiles.select_for_update().values_list("pk", flat=True))
        return UserProfile.objects.filter(pk__in=locked).delete()[1].get(UserProfile._meta.label, 0)


NO_PROFILE = "unknown user: no profile"
OVER_CAP = (
    "more than {cap:,} behaviours, more than a worker may hold for one user "
    "(EXTRACTION_MAX_BEHAVIORS_PER_USER): not extracted; raise the cap to extract this user"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One user's extraction, from the extractor to the commit: its input (None when it has no
    profile), its events or the error that stopped it, and the tokens paid for it (LLM extractors;
    paid is paid, whatever the result; reasoning tokens are a part of the completion tokens)."""

    user_id: str
    user: UserInput | None
    result: UserResult
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def succeeded(self) -> bool:
        return not isinstance(self.result, ExtractionError)

    @property
    def drafts(self) -> list[EventDraft]:
        """The events found (none when it failed)."""
        return [] if isinstance(self.result, ExtractionError) else self.result

    @property
    def events(self) -> int:
        return len(self.drafts)


def chunk_extract(
    *, user_ids: Sequence[str], extractor: Extractor, control: Control | None = None
) -> list[Outcome]:
    """Load these users and run the extractor on them; writes nothing. One outcome per id, in order:
    an id without a profile (deleted meanwhile) or with more behaviours than a worker may hold
    fails for good, and a user the extractor left out fails instead of silently getting no events."""
    left_out = ExtractionError(f"extractor {extractor.name!r} returned no result for this user")
    if not extractor.reads_users:  # it gets ids alone, and what it returns is not saved (see Extractor)
        results = extractor.extract([UserInput(user_id, {}, 0, []) for user_id in user_ids], control)
        return [outcome_of(user_id, None, results.get(user_id, left_out), control) for user_id in user_ids]
    loaded = user_inputs_load(user_ids)
    inputs = {user.user_id: user for user in loaded}
    results = extractor.extract(list(inputs.values()), control)
    no_profile = ExtractionError(NO_PROFILE, permanent=True)
    over_cap = ExtractionError(
        OVER_CAP.format(cap=settings.EXTRACTION_MAX_BEHAVIORS_PER_USER), permanent=True
    )
    refused = dict.fromkeys(loaded.over_cap, over_cap)
    return [
        outcome_of(
            user_id,
            inputs.get(user_id),
            results.get(user_id, left_out) if user_id in inputs else refused.get(user_id, no_profile),
            control,
        )
        for user_id in user_ids
    ]


def outcome_of(user_id: str, user: UserInput | None, result: UserResult, control: Control | None) -> Outcome:
    """An outcome with the tokens the control heard paid for this user."""
    prompt, completion, reasoning = control.usage.get(user_id, (0, 0, 0)) if control else (0, 0, 0)
    return Outcome(user_id, user, result, prompt, completion, reasoning)


def extraction_results_save(*, outcomes: Sequence[Outcome], extractor: Extractor) -> None:
    """Save the events of the users that succeeded, in one transaction: each user's new events
    replace its old ones together with its state, so a user never has events from two runs.
    (Failures keep the events of the last success: extraction_failures_record notes them.)"""
    with transaction.atomic():
        extraction_results_write(outcomes=outcomes, extractor=extractor)


def extraction_results_write(*, outcomes: Sequence[Outcome], extractor: Extractor) -> None:
    """extraction_results_save inside the caller's own transaction (the engine's fenced commit).

    Two statements whatever the chunk's size (three on SQLite): the old events deleted and the
    states upserted together, then the new events written (binary COPY on PostgreSQL), if any.

    Events have no foreign key in the database: its check was a trigger for each event row, a third
    of PostgreSQL's time in a rules chunk (measured). The states' upsert locks the users' profiles
    instead (FOR KEY SHARE), once per chunk, and raises IntegrityError, writing nothing, for a
    profile deleted since the chunk loaded it: profiles_delete takes the same lock first, so either
    the commit waits for the delete and fails, or the delete waits for the commit and removes its
    events.
    """
    saved = [outcome for outcome in outcomes if outcome.succeeded and outcome.user is not None]
    if not saved:
        return
    now = timezone.now()
    with connection.cursor() as cursor:
        _states_replace(cursor, saved, extractor, now)
        if any(outcome.result for outcome in saved):
            events = _event_rows(saved, extractor, now)
            copy_rows(cursor, ExtractedEvent._meta.db_table, EVENT_COLUMNS, events, types=EVENT_TYPES)


def _event_rows(saved: Sequence[Outcome], extractor: Extractor, now: datetime):
    """The saved users' events as rows of EVENT_COLUMNS, plain tuples in EventRow's order: a rules
    chunk writes about 47 a user, and building NamedTuples by keyword took this function 0.53 s
    for 3,000 users instead of 0.34 (profiled)."""
    db_datetime, db_json = datetime_adapter(), json_adapter()
    created_at = db_datetime(now)
    name, version = extractor.name, extractor.version
    for outcome in saved:
        user_id = outcome.user_id
        for sequence, draft in enumerate(outcome.drafts, start=1):
            yield (
                user_id,
                sequence,
                draft.event_type,
                draft.label,
                draft.category,
                db_datetime(draft.starts_at),
                db_datetime(draft.ends_at),
                db_json(draft.context),
                db_json(draft.behavior_ids),
                name,
                version,
                created_at,
            )


STATE_COLUMNS = {
    "user_id": "text",
    "event_count": "integer",
    "input_version": "integer",
    "input_fingerprint": "text",
}


def _states_replace(cursor, saved: Sequence[Outcome], extractor: Extractor, now: datetime) -> None:
    """Delete the old events of users that succeeded and insert or replace their states: one
    statement on PostgreSQL (the DELETE in a WITH reads the same rows), two on SQLite."""
    table, events = ExtractionState._meta.db_table, ExtractedEvent._meta.db_table
    rows, params = rows_sql(
        [
            {
                "user_id": outcome.user_id,
                "event_count": len(outcome.drafts),
                "input_version": user.input_version,
                "input_fingerprint": user.fingerprint(),
            }
            for outcome in saved
            if (user := outcome.user) is not None  # (as all saved ones have)
        ],
        STATE_COLUMNS,
    )
    at = datetime_adapter()(now)
    lock = "FOR KEY SHARE OF p " if is_postgresql() else ""  # (SQLite has one writer at a time)
    insert = (
        f"INSERT INTO {table} (user_id, status, attempted_at, error, extracted_at, event_count, "
        f"extractor, extractor_version, input_version, input_fingerprint) "
        f"SELECT v.user_id, %s, %s, '', %s, v.event_count, %s, %s, v.input_version, "
        f"v.input_fingerprint FROM {rows} JOIN {UserProfile._meta.db_table} p ON p.user_id = v.user_id "
        f"WHERE true {lock}"
        f"ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, "
        f"attempted_at = excluded.attempted_at, error = '', extracted_at = excluded.extracted_at, "
        f"event_count = excluded.event_count, extractor = excluded.extractor, "
        f"extractor_version = excluded.extractor_version, input_version = excluded.input_version, "
        f"input_fingerprint = excluded.input_fingerprint"
    )
    values = [ExtractionState.Outcome.SUCCEEDED, at, at, extractor.name, extractor.version, *params]
    if is_postgresql():
        # Each user's old events found through the user's index, whatever the planner knows: while
        # the table has no statistics (a new one; autovacuum analyses it a minute later at best),
        # `user_id IN (…)` guessed most of it matched and read all of it, each chunk (measured: a
        # 4,000-user first run's deletes read 1.3 million rows, an eighth of its database time).
        gone = (
            f"WITH gone AS (DELETE FROM {events} WHERE ctid = ANY(ARRAY(SELECT e.ctid FROM {rows} "
            f"CROSS JOIN LATERAL (SELECT ctid FROM {events} WHERE user_id = v.user_id OFFSET 0) e))) "
        )
        cursor.execute(gone + insert, [*params, *values])
    else:
        chosen, chosen_params = in_values("user_id", [outcome.user_id for outcome in saved])
        cursor.execute(f"DELETE FROM {events} WHERE {chosen}", chosen_params)
        cursor.execute(insert, values)
    if cursor.rowcount < len(saved):
        kept = set(
            UserProfile.objects.filter(user_id__in=[o.user_id for o in saved]).values_list("pk", flat=True)
        )
        gone_ids = sorted(o.user_id for o in saved if o.user_id not in kept)
        raise IntegrityError(f"profiles deleted while their chunk ran: {', '.join(gone_ids)}")


def extraction_failures_record(*, errors: dict[str, str]) -> None:
    """Record failed attempts in the users' states; their stored events stay as they are.

    Ids without a profile (deleted meanwhile) are skipped: there is no state to keep.
    """
    now = timezone.now()
    existing = UserProfile.objects.filter(user_id__in=list(errors)).values_list("user_id", flat=True)
    ExtractionState.objects.bulk_create(
        [
            ExtractionState(
                user_id=user_id,
                status=ExtractionState.Outcome.FAILED,
                attempted_at=now,
                error=errors[user_id],
            )
            for user_id in existing
        ],
        update_conflicts=True,
        unique_fields=["user"],
        update_fields=["status", "attempted_at", "error"],
    )
