"""The real Prometheus (Debian's) scrapes the production web server as the README says: directly,
over plain HTTP, although the site is served with HTTPS=on; `up` is 1 in Prometheus's own API, and
the job figures move there while a job runs on a real cluster. promtool finds nothing to say about
what /metrics serves.

Without Prometheus these tests are skipped, saying how to install it; in CI (REQUIRE_PROMETHEUS=1)
its absence fails the run instead."""

import os
import subprocess

import pytest

from jobs.services import job_start
from tests.cluster import wait_for
from tests.servers import Prometheus
from tests.tools import executable, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
PROMTOOL = os.environ.get("PROMTOOL", "/usr/bin/promtool")
if not (executable(Prometheus.BINARY) and executable(PROMTOOL)):
    pytestmark.append(
        unavailable(
            f"the monitoring tests need Prometheus at {Prometheus.BINARY} and promtool at {PROMTOOL}: "
            "install them with `sudo apt-get install prometheus` (Debian/Ubuntu), or point PROMETHEUS "
            "and PROMTOOL at them",
            required_by="REQUIRE_PROMETHEUS",
        )
    )


def one(scraper: Prometheus, expression: str) -> float | None:
    """The value of a query that selects one series (None while it selects none)."""
    found = scraper.query(expression)
    assert len(found) <= 1, found
    return found[0][1] if found else None


def test_prometheus_scrapes_the_server_behind_https_and_sees_a_job_move(
    web_server, clusters, prometheus, make_users
):
    users = make_users(60)
    clusters()
    server = web_server(HTTPS="on", TRUSTED_PROXIES="127.0.0.1")
    scraper = prometheus(server)
    wait_for(
        lambda: one(scraper, 'up{job="eventproject"}') == 1,
        timeout=30,
        what=f"Prometheus to scrape the server (up == 1):\n{scraper.output()[-2000:]}",
        interval=0.5,
    )
    assert one(scraper, "eventproject_database_up") == 1
    wait_for(lambda: one(scraper, "eventproject_clusters_alive") == 1, timeout=30, what="a live cluster")

    job = job_start(user_ids=users, extractor="test", chunk_size=2, options={"seconds_per_user": 0.15})
    seen = set()

    def moving() -> bool:
        if one(scraper, 'eventproject_jobs{status="running"}') == 1:
            finished = one(scraper, 'eventproject_items_finished_total{outcome="succeeded"}')
            if finished is not None and 0 < finished < 60:
                seen.add(finished)
        return len(seen) >= 3

    wait_for(
        moving, timeout=60, what=f"three scrapes of the job under way (seen {sorted(seen)})", interval=0.5
    )
    wait_for(
        lambda: one(scraper, 'eventproject_items_finished_total{outcome="succeeded"}') == 60,
        timeout=60,
        what="the finished job in Prometheus",
        interval=0.5,
    )
    job.refresh_from_db()
    assert job.status == "completed"
    assert one(scraper, 'eventproject_job_items{status="pending"}') == 0
    assert one(scraper, 'sum(eventproject_http_request_duration_seconds_count{route="metrics"})') > 0


def test_promtool_finds_nothing_to_say_about_the_metrics(web_server, make_users, failing_job):
    make_users(3)
    failing_job(["u001", "u002"], ["u002"])  # figures of every kind, some not zero
    server = web_server()
    server.get("/healthz")  # a request to time
    status, _, body = server.get("/metrics")
    assert status == 200
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == b"", result.stdout + result.stderr
