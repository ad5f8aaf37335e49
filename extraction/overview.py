"""Reads for the admin's pictures of extracted events (the engine's reads are in selectors.py)."""

from typing import Any

from django.db.models import Count, Max, QuerySet

from .models import ExtractedEvent

# Counts by type read at most this many events (the latest), so the events list stays quick on a
# table of millions; the picture says so when it shows a sample.
EVENT_COUNTS_SAMPLE = 200_000
EVENT_TYPES_SHOWN = 15


def event_counts(events: QuerySet[ExtractedEvent], *, sample: int = EVENT_COUNTS_SAMPLE) -> dict[str, Any]:
    """Events by type and by category, grouped in the database over (at most the latest `sample` of)
    `events`, e.g. the admin list's filtered queryset."""
    latest = events.order_by("-id").values("id")[:sample]
    grouped = list(
        ExtractedEvent.objects.filter(id__in=latest)
        .values("event_type", "category")
        .annotate(count=Count("id"), label=Max("label"))
        .order_by("-count", "event_type")
    )
    by_category: dict[str, int] = {}
    for row in grouped:
        by_category[row["category"]] = by_category.get(row["category"], 0) + row["count"]
    counted = sum(by_category.values())
    return {
        "by_type": grouped[:EVENT_TYPES_SHOWN],
        "other_types": len(grouped) - min(len(grouped), EVENT_TYPES_SHOWN),
        "by_category": sorted(by_category.items(), key=lambda item: -item[1]),
        "counted": counted,
        "sampled": counted >= sample,
    }
