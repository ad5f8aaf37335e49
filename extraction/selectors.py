"""Reads of the extraction domain."""

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, OuterRef, QuerySet

from eventproject.db import in_values, is_postgresql

from .extractors import BehaviorRecord, UserInput
from .models import EVENT_COLUMNS, Behavior, DataImport, ExtractedEvent, ExtractionState, UserProfile

# An event filter's fields (the API's EventFilter) -> the lookups they stand for.
EVENT_LOOKUPS = {
    "user": "user_id",
    "type": "event_type",
    "category": "category",
    "since": "starts_at__gte",
    "until": "starts_at__lt",
}
EXPORT_COLUMNS = ["id", *EVENT_COLUMNS[:-1]]  # all but created_at


def users_needing_extraction() -> QuerySet[UserProfile]:
    """Users never extracted successfully, or whose input changed since the last success."""
    fresh = ExtractionState.objects.filter(
        user_id=OuterRef("user_id"),
        status=ExtractionState.Outcome.SUCCEEDED,
        input_version=OuterRef("input_version"),
    )
    return UserProfile.objects.filter(~Exists(fresh))


def user_summaries() -> QuerySet[UserProfile]:
    """Profiles with their extraction state, behaviour count and whether they need extraction, in
    one query (look one up by user_id)."""
    needing = users_needing_extraction().filter(user_id=OuterRef("user_id"))
    return UserProfile.objects.select_related("extraction_state").annotate(
        behavior_count=Count("behaviors"), needs_extraction=Exists(needing)
    )


def user_events(user: UserProfile) -> QuerySet[ExtractedEvent]:
    """A user's events in sequence order (the API reads them a page at a time)."""
    return ExtractedEvent.objects.filter(user=user).order_by("sequence")


def events_filter(**filters) -> QuerySet[ExtractedEvent]:
    """Events matching validated filters named as in EVENT_LOOKUPS (user, type, category, since,
    until); every one is optional."""
    return ExtractedEvent.objects.filter(**{EVENT_LOOKUPS[key]: value for key, value in filters.items()})


def events_export_batches(*, batch_size: int, **filters) -> Iterator[list[tuple]]:
    """The filtered events as tuples of EXPORT_COLUMNS in id order, `batch_size` at a time, each
    batch a short query of its own (the ids above the last one sent): nothing stays open between
    two batches, so an export whose client reads slowly, or not at all, holds no cursor and no
    connection meanwhile. Events written while an export runs may or may not be in it, and a
    user extracted again meanwhile (old events deleted, new ones with higher ids) may appear with
    both runs' events or with neither: no snapshot spans the batches."""
    rows = events_filter(**filters).order_by("id").values_list(*EXPORT_COLUMNS)
    last = 0  # ids start at 1
    while batch := list(rows.filter(id__gt=last)[:batch_size]):
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1][0]


def imports_list() -> QuerySet[DataImport]:
    """Imports newest first, with who started them."""
    return DataImport.objects.select_related("created_by").order_by("-id")


class UserInputs(list):
    """Users' inputs, in the order asked for (a list of UserInput), and `over_cap`: the ids left
    out for having more than EXTRACTION_MAX_BEHAVIORS_PER_USER behaviours."""

    def __init__(self, inputs: Iterable[UserInput], over_cap: Iterable[str] = ()):
        super().__init__(inputs)
        self.over_cap = frozenset(over_cap)


def user_inputs_load(user_ids: Iterable[str]) -> UserInputs:
    """The inputs of these users (in the given order), in two queries.

    The version is read before the behaviours: if an import lands in between,
    the user is recorded with the older version and simply extracted again.
    Unknown ids are left out, and so are users with more behaviours than
    EXTRACTION_MAX_BEHAVIORS_PER_USER (in `over_cap`): a worker holds a user's whole log at once,
    so such a user's behaviours are never read. Counting stops one past the cap (the index on
    the user's behaviours), so a huge log costs no more to refuse than a log at the cap.
    """
    user_ids = list(user_ids)
    cap = settings.EXTRACTION_MAX_BEHAVIORS_PER_USER
    chosen, params = in_values("user_id", user_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT user_id, attributes, input_version, (SELECT count(*) FROM (SELECT 1 FROM "
            f"{Behavior._meta.db_table} b WHERE b.user_id = p.user_id LIMIT %s) capped) "
            f"FROM {UserProfile._meta.db_table} p WHERE {chosen}",
            [cap + 1, *params],
        )
        profiles, over_cap = {}, []
        for user_id, attributes, version, behaviors in cursor.fetchall():
            if behaviors > cap:
                over_cap.append(user_id)
            else:
                profiles[user_id] = (_json(attributes), version)
    behaviors = _behaviors_of(list(profiles))
    return UserInputs(
        (
            UserInput(user_id, *profiles[user_id], behaviors.get(user_id, []))
            for user_id in user_ids
            if user_id in profiles
        ),
        over_cap,
    )


def _json(value) -> Any:
    """A JSON column as read by raw SQL: text here, already decoded by some drivers."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _behaviors_of(user_ids: list[str]) -> dict[str, list[BehaviorRecord]]:
    """These users' behaviours in time order, decoded, by user.

    The hottest read of an extraction run, so it skips the ORM's per-value converters (3× slower
    here): PostgreSQL times go through psycopg's C loader, records are made by tuple's own
    constructor (NamedTuple._make checks the length in Python: a fifth of the load's time), and
    the common empty `extra` is not parsed at all.
    """
    if not user_ids:
        return {}
    chosen, params = in_values("user_id", user_ids)
    with connection.cursor() as cursor:
        if is_postgresql():
            from psycopg.types.datetime import TimestamptzLoader  # psycopg is loaded by now

            cursor.cursor.adapters.register_loader("timestamptz", TimestamptzLoader)  # aware, in UTC
        cursor.execute(
            f"SELECT user_id, action, occurred_at, item, app, media, place, duration_seconds, extra, id "
            f"FROM {Behavior._meta.db_table} WHERE {chosen} ORDER BY user_id, occurred_at, id",
            params,
        )
        rows = cursor.fetchall()
    new, record, empty, loads = (
        tuple.__new__,
        BehaviorRecord,
        BehaviorRecord._field_defaults["extra"],
        orjson.loads,
    )
    aware = is_postgresql()  # else Django's converter gives naive UTC datetimes
    behaviors: dict[str, list[BehaviorRecord]] = {}
    user_id = None
    append: Callable[[BehaviorRecord], None]  # set by the first row
    for row in rows:
        if row[0] != user_id:  # the first row's id serves all the user's records: one string, not one each
            user_id = row[0]
            append = behaviors.setdefault(user_id, []).append
        extra = empty if row[8] == "{}" else loads(row[8])
        if aware:
            append(new(record, (user_id, *row[1:8], extra, row[9])))
        else:
            append(new(record, (user_id, row[1], row[2].replace(tzinfo=UTC), *row[3:8], extra, row[9])))
    return behaviors
