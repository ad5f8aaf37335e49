"""What /metrics shows of jobs, read from their tables at each scrape (registered with ops.metrics
when the app is ready): jobs and items by status, and the items finished per second."""

from collections.abc import Iterator, Mapping
from typing import Any

from django.db.models import Count, Q, Sum
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from ops.metrics import PREFIX

from .models import Job, JobItem
from .progress import jobs_throughput


def jobs_figures() -> Iterator:
    rows = (
        Job.objects.order_by()
        .values("status")
        .annotate(
            jobs=Count("id"),
            total=Sum("total_items"),
            succeeded=Sum("succeeded_items"),
            failed=Sum("failed_items"),
            cancelled=Sum("cancelled_items"),
        )
    )
    jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by status", labels=["status"])
    by_status: dict[str, Mapping[str, Any]] = {row["status"]: row for row in rows}
    for status in Job.Status.values:
        jobs.add_metric([status], by_status.get(status, {}).get("jobs", 0))
    yield jobs

    def total(field: str, statuses=Job.Status.values) -> int:
        return sum(by_status[status][field] or 0 for status in statuses if status in by_status)

    # Jobs are never deleted and an item succeeds or fails once, so these only grow.
    finished = CounterMetricFamily(
        f"{PREFIX}_items_finished", "Items finished, by outcome", labels=["outcome"]
    )
    finished.add_metric(["succeeded"], total("succeeded"))
    finished.add_metric(["failed"], total("failed"))
    yield finished

    running = JobItem.objects.filter(Q(job__status__in=Job.ACTIVE), status=JobItem.Status.RUNNING).count()
    active = Job.ACTIVE
    finished_in_active = total("succeeded", active) + total("failed", active) + total("cancelled", active)
    items = GaugeMetricFamily(
        f"{PREFIX}_job_items",
        "Items of all jobs by status: pending and running are the work still to do",
        labels=["status"],
    )
    items.add_metric(["pending"], max(total("total", active) - finished_in_active - running, 0))
    items.add_metric(["running"], running)
    items.add_metric(["succeeded"], total("succeeded"))
    items.add_metric(["failed"], total("failed"))
    items.add_metric(["cancelled"], total("cancelled"))
    yield items
    yield GaugeMetricFamily(
        f"{PREFIX}_items_per_second",
        "Items finished per second over the last minute, summed over the running jobs",
        value=jobs_throughput(),
    )
