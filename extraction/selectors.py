"""Reads of the extraction domain."""

from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from psycopg.types.datetime import TimestamptzLoader

from eventproject.db import is_postgresql

from .extractors import BehaviorRecord, UserInput
from .models import Behavior, ExtractionState, UserProfile


def users_needing_extraction() -> QuerySet[UserProfile]:
    """Users never extracted successfully, or whose input changed since the last success."""
    fresh = ExtractionState.objects.filter(
        user_id=OuterRef("user_id"),
        status=ExtractionState.Outcome.SUCCEEDED,
        input_version=OuterRef("input_version"),
    )
    return UserProfile.objects.filter(~Exists(fresh))


def user_inputs_load(user_ids: Iterable[str]) -> list[UserInput]:
    """The inputs of these users (in the given order), in two queries.

    The version is read before the behaviours: if an import lands in between,
    the user is recorded with the older version and simply extracted again.
    Unknown ids are left out.
    """
    user_ids = list(user_ids)
    profiles = {
        user_id: (attributes, version)
        for user_id, attributes, version in UserProfile.objects.filter(user_id__in=user_ids).values_list(
            "user_id", "attributes", "input_version"
        )
    }
    behaviors: dict[str, list[BehaviorRecord]] = {user_id: [] for user_id in profiles}
    for user_id, record in _behavior_rows(list(profiles)):
        behaviors[user_id].append(record)
    return [
        UserInput(user_id, profiles[user_id][0], profiles[user_id][1], behaviors[user_id])
        for user_id in user_ids
        if user_id in profiles
    ]


def _behavior_rows(user_ids: list[str]) -> list[tuple[str, BehaviorRecord]]:
    """Behaviour rows of these users in time order, decoded.

    The hottest read of an extraction run, so it skips the ORM's per-value
    converters (3× slower here): PostgreSQL times go through psycopg's C loader,
    and the common empty `extra` is not parsed at all.
    """
    if not user_ids:
        return []
    table = Behavior._meta.db_table
    columns = "user_id, id, action, occurred_at, item, app, media, place, duration_seconds, extra"
    select = f"SELECT {columns} FROM {table} "
    order = " ORDER BY user_id, occurred_at, id"
    with connection.cursor() as cursor:
        if is_postgresql():
            cursor.cursor.adapters.register_loader("timestamptz", TimestamptzLoader)  # aware, in UTC
            cursor.execute(select + "WHERE user_id = ANY(%s)" + order, [user_ids])
            tag = _same
        else:  # Django's converter gives naive UTC datetimes
            cursor.execute(
                select + f"WHERE user_id IN ({', '.join(['%s'] * len(user_ids))})" + order, user_ids
            )
            tag = _utc
        rows = cursor.fetchall()
    return [
        (
            user_id,
            BehaviorRecord(
                id_,
                action,
                tag(moment),
                item,
                app,
                media,
                place,
                duration,
                {} if extra == "{}" else orjson.loads(extra),
            ),
        )
        for user_id, id_, action, moment, item, app, media, place, duration, extra in rows
    ]


def _same(value):
    return value


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)
