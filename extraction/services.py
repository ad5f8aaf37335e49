"""Writes of the extraction domain: bulk imports and saving extraction results."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from eventproject.db import copy_rows, datetime_adapter, is_postgresql, json_text, staging_table

from .extractors import Control, ExtractionError, Extractor, UserInput, UserResult
from .models import Behavior, ExtractedEvent, ExtractionState, UserProfile
from .selectors import user_inputs_load

BEHAVIOR_COLUMNS = (
    "user_id",
    "action",
    "occurred_at",
    "item",
    "app",
    "media",
    "place",
    "duration_seconds",
    "extra",
)

EVENT_COLUMNS = (
    "user_id",
    "sequence",
    "event_type",
    "label",
    "category",
    "starts_at",
    "ends_at",
    "context",
    "behavior_ids",
    "extractor",
    "extractor_version",
    "created_at",
)


@dataclass(frozen=True, slots=True)
class BehaviorRow:
    """One validated behaviour, ready to insert."""

    user_id: str
    action: str
    occurred_at: datetime
    item: str = ""
    app: str = ""
    media: str = ""
    place: str = ""
    duration_seconds: float | None = None
    extra: dict[str, Any] | None = None


def behaviors_insert(rows: Sequence[BehaviorRow]) -> int:
    """Insert new behaviours, ignoring ones already stored; returns how many were new.

    Creates a profile row for users seen for the first time and bumps the input
    version of every user who got a new behaviour, in one transaction.
    """
    if not rows:
        return 0
    now = timezone.now()
    db_datetime = datetime_adapter()
    table = Behavior._meta.db_table
    profiles = UserProfile._meta.db_table
    columns = ", ".join(BEHAVIOR_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        staging_table(cursor, "staging_behavior", table, BEHAVIOR_COLUMNS)
        copy_rows(
            cursor,
            "staging_behavior",
            BEHAVIOR_COLUMNS,
            (
                (
                    r.user_id,
                    r.action,
                    db_datetime(r.occurred_at),
                    r.item,
                    r.app,
                    r.media,
                    r.place,
                    r.duration_seconds,
                    json_text(r.extra or {}),
                )
                for r in rows
            ),
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


def chunk_extract(
    *, user_ids: Sequence[str], extractor: Extractor, control: Control | None = None
) -> list[tuple[UserInput, UserResult]]:
    """Load these users and run the extractor on them; writes nothing.

    Every user comes back with a result: a user the extractor left out gets an
    error instead of silently no events. Ids with no profile are not returned.
    """
    inputs = user_inputs_load(user_ids)
    results = extractor.extract(inputs, control)
    missing = ExtractionError(f"extractor {extractor.name!r} returned no result for this user")
    return [(user, results.get(user.user_id, missing)) for user in inputs]


def extraction_results_save(
    *, outcomes: Sequence[tuple[UserInput, UserResult]], extractor: Extractor
) -> None:
    """Record one chunk of extraction outcomes in one transaction.

    For every user that succeeded, the new events replace the old ones together
    with the user's state, so a user never has events from two runs. A user that
    failed keeps the events of its last success; only the failure is recorded.
    """
    now = timezone.now()
    db_datetime = datetime_adapter()
    succeeded = [(user, result) for user, result in outcomes if not isinstance(result, ExtractionError)]
    failed = [(user, result) for user, result in outcomes if isinstance(result, ExtractionError)]
    created_at = db_datetime(now)
    events = (
        (
            user.user_id,
            sequence,
            draft.event_type,
            draft.label,
            draft.category,
            db_datetime(draft.starts_at),
            db_datetime(draft.ends_at),
            json_text(draft.context),
            json_text(draft.behavior_ids),
            extractor.name,
            extractor.version,
            created_at,
        )
        for user, drafts in succeeded
        for sequence, draft in enumerate(drafts, start=1)
    )
    with transaction.atomic():
        if succeeded:
            ExtractedEvent.objects.filter(user_id__in=[user.user_id for user, _ in succeeded]).delete()
            with connection.cursor() as cursor:
                copy_rows(cursor, ExtractedEvent._meta.db_table, EVENT_COLUMNS, events)
            _states_upsert(
                (
                    user.user_id,
                    ExtractionState.Outcome.SUCCEEDED,
                    created_at,
                    "",
                    created_at,
                    len(drafts),
                    extractor.name,
                    extractor.version,
                    user.input_version,
                    user.fingerprint(),
                )
                for user, drafts in succeeded
            )
        if failed:
            extraction_failures_record(errors={user.user_id: error.message for user, error in failed})


STATE_COLUMNS = (
    "user_id",
    "status",
    "attempted_at",
    "error",
    "extracted_at",
    "event_count",
    "extractor",
    "extractor_version",
    "input_version",
    "input_fingerprint",
)


def _states_upsert(rows) -> None:
    """Insert or replace the states of users that succeeded (COPY: 10× faster than bulk_create here)."""
    table = ExtractionState._meta.db_table
    columns = ", ".join(STATE_COLUMNS)
    updates = ", ".join(f"{column} = excluded.{column}" for column in STATE_COLUMNS[1:])
    with connection.cursor() as cursor:
        staging_table(cursor, "staging_state", table, STATE_COLUMNS)
        copy_rows(cursor, "staging_state", STATE_COLUMNS, rows)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM staging_state WHERE 1 = 1 "
            f"ON CONFLICT (user_id) DO UPDATE SET {updates}"
        )


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
