"""/healthz, /status and /metrics of a real gunicorn (as deploy/eventproject-web.service runs it,
DEBUG off) while real qcluster processes come and go and work on jobs, and while the database is
away."""

import json
import shutil
import sqlite3

import pytest
from django.db import connection

from jobs.models import Job
from jobs.services import job_start
from tests.cluster import test_database_url as database_url
from tests.cluster import wait_for
from tests.fake_openai import API_KEY, MODEL, tokens_reported
from tests.test_metrics import parse, value

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def health(server, path: str = "/healthz") -> tuple[int, dict]:
    status, _, body = server.get(path)
    return status, json.loads(body)


def status_page(server) -> tuple[int, dict]:
    return health(server, "/status")


def scrape(server) -> dict:
    status, _, body = server.get("/metrics")
    assert status == 200, body
    return parse(body.decode())


def test_status_follows_the_clusters_while_healthz_stays_200(web_server, clusters):
    server = web_server()
    code, report = status_page(server)
    assert code == 503 and report["errors"][0].startswith("cluster: no task cluster")
    assert health(server)[0] == 200  # no cluster yet: the web server still serves

    killed = clusters()
    wait_for(lambda: status_page(server)[0] == 200, timeout=30, what=f"a live cluster:\n{killed.output()}")
    killed.kill()  # SIGKILL: its heartbeat is never updated again
    wait_for(lambda: status_page(server)[0] == 503, timeout=10, what="the killed cluster to be missed")
    assert status_page(server)[1]["checks"]["cluster"]["alive"] == 0
    assert health(server) == (200, {"status": "ok", "errors": [], "checks": health(server)[1]["checks"]})
    assert value(scrape(server), "eventproject_clusters_alive") == 0

    stopped = clusters()
    wait_for(lambda: status_page(server)[0] == 200, timeout=30, what=f"a live cluster:\n{stopped.output()}")
    assert status_page(server)[1]["checks"]["cluster"] == {"ok": True, "alive": 1}
    assert value(scrape(server), "eventproject_clusters_alive") == 1
    stopped.stop()  # SIGTERM: it says it is stopping
    code, report = wait_for(
        lambda: (result := status_page(server))[0] == 503 and result, timeout=10, what="a stopped cluster"
    )
    assert report["errors"] == [
        "cluster: no task cluster named 'eventproject' has been seen alive in the last 3 s "
        "(start one: manage.py qcluster)"
    ]
    assert health(server)[0] == 200


class DatabaseSwitch:
    """Takes the web server's database away and brings it back. SQLite: the server works on a copy
    of the test database whose folder is moved away. PostgreSQL: the test database refuses new
    connections and the server's are ended (found by their application name)."""

    APPLICATION = "ep-healthz-test"

    def __init__(self, tmp_path):
        self.postgresql = connection.vendor == "postgresql"
        if self.postgresql:
            self.url = f"{database_url()}?application_name={self.APPLICATION}"
        else:
            self.folder = tmp_path / "database"
            self.folder.mkdir()
            copy = sqlite3.connect(self.folder / "db.sqlite3")
            connection.ensure_connection()
            connection.connection.backup(copy)
            copy.close()
            self.url = f"sqlite:///{self.folder / 'db.sqlite3'}"
            self.away = tmp_path / "database-away"

    def cut(self) -> None:
        if self.postgresql:
            self._maintenance(
                f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = %s",
            )
        else:
            shutil.move(self.folder, self.away)

    def restore(self) -> None:
        if self.postgresql:
            self._maintenance(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")
        elif self.away.exists():
            shutil.move(self.away, self.folder)

    @property
    def name(self) -> str:
        return connection.ops.quote_name(connection.settings_dict["NAME"])

    def _maintenance(self, *statements: str) -> None:
        """Run statements from the server's maintenance database (PostgreSQL refuses to close the
        database a session is connected to)."""
        import psycopg

        s = connection.settings_dict
        with psycopg.connect(
            host=s["HOST"] or "127.0.0.1",
            port=s["PORT"] or 5432,
            user=s["USER"],
            password=s["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        ) as admin:
            for statement in statements:
                params = [self.APPLICATION, connection.settings_dict["NAME"]] if "%s" in statement else None
                admin.execute(statement, params)


def test_while_the_database_is_gone_healthz_and_status_say_so_and_metrics_still_answer(web_server, tmp_path):
    switch = DatabaseSwitch(tmp_path)
    server = web_server(DATABASE_URL=switch.url)
    assert health(server)[1]["checks"]["database"]["ok"]
    assert value(scrape(server), "eventproject_database_up") == 1
    try:
        switch.cut()
        code, report = health(server)
        assert code == 503
        assert report["checks"]["database"]["ok"] is False
        assert report["errors"][0] == "database: cannot reach the database"  # public: no host nor port
        assert "detail" not in report["checks"]["database"]
        assert report["checks"]["migrations"] == {
            "ok": False,
            "error": "not checked: the database is unreachable",
        }
        code, report = status_page(server)
        assert code == 503 and report["errors"][0].startswith("database: cannot reach the database: ")
        assert report["checks"]["cluster"] == {
            "ok": False,
            "error": "not checked: the database is unreachable",
        }
        samples = scrape(server)  # 200: the scrape says what is down rather than failing
        assert value(samples, "eventproject_database_up") == 0
        assert value(samples, "eventproject_broker_up") == 0  # the ORM broker is the database
        assert ("eventproject_jobs", (("status", "running"),)) not in samples
    finally:
        switch.restore()
    code, report = health(server)
    assert (
        code == 200 and report["checks"]["database"]["ok"] and report["checks"]["migrations"] == {"ok": True}
    )
    assert value(scrape(server), "eventproject_database_up") == 1


def test_metrics_scraped_while_a_job_runs_on_a_real_cluster_agree_with_its_progress(
    web_server, clusters, make_users, tmp_path
):
    make_users(300)
    cluster = clusters(Q_WORKERS="2")
    server = web_server(WEB_CONCURRENCY="2")  # /metrics adds up the request counts of two processes
    wait_for(lambda: status_page(server)[0] == 200, timeout=30, what=f"the cluster:\n{cluster.output()}")
    job = job_start(extractor="test", chunk_size=5, options={"seconds_per_user": 0.03})

    def succeeded() -> int:
        return Job.objects.get(id=job.id).succeeded_items

    seen_mid_job = []

    def scraped_mid_job() -> bool:
        before = succeeded()
        samples = scrape(server)
        after = succeeded()
        reported = value(samples, "eventproject_items_finished_total", outcome="succeeded")
        assert before <= reported <= after, (before, reported, after)
        if 0 < reported < 300:
            assert value(samples, "eventproject_jobs", status="running") == 1
            assert value(samples, "eventproject_items_per_second") > 0
            assert value(samples, "eventproject_clusters_alive") == 1
            seen_mid_job.append(reported)
        return len(seen_mid_job) >= 2

    wait_for(
        scraped_mid_job,
        timeout=60,
        what=f"two scrapes in the middle of the job (seen: {seen_mid_job})",
        interval=0.3,
    )
    wait_for(lambda: Job.objects.get(id=job.id).status == "completed", timeout=60, what="the job to end")
    samples = scrape(server)
    assert value(samples, "eventproject_items_finished_total", outcome="succeeded") == 300
    assert value(samples, "eventproject_items_finished_total", outcome="failed") == 0
    assert value(samples, "eventproject_jobs", status="completed") == 1
    assert value(samples, "eventproject_jobs", status="running") == 0
    for status in ("pending", "running"):
        assert value(samples, "eventproject_job_items", status=status) == 0

    # Request latency adds up over gunicorn's worker processes, whichever one answers the scrape.
    route = {"method": "GET", "route": "healthz", "status": "200"}
    counted = value(samples, "eventproject_http_request_duration_seconds_count", **route)
    for _ in range(20):
        assert server.get("/healthz")[0] == 200
    for _ in range(4):
        samples = scrape(server)
        assert value(samples, "eventproject_http_request_duration_seconds_count", **route) == counted + 20
    workers = {path.stem.split("_")[-1] for path in (tmp_path / f"metrics-{server.port}").glob("histogram_*")}
    assert len(workers) >= 2, f"only worker processes {workers} answered; the sum was not put to the test"


def test_llm_figures_on_metrics_count_every_call_the_clusters_made(
    web_server, clusters, llm_server, make_users
):
    make_users(40, behaviors=4)
    llm_server.latency = 0.1
    llm_server.script.append("500")
    clusters(
        OPENAI_BASE_URL=llm_server.url,
        OPENAI_API_KEY=API_KEY,
        EXTRACTION_LLM_MODEL=MODEL,
        EXTRACTION_LLM_BACKOFF_SECONDS="0.05",
    )
    server = web_server()
    job = job_start(extractor="llm", chunk_size=20, options={"max_concurrency": 2, "token_budget": 1200})
    wait_for(lambda: Job.objects.get(id=job.id).status == "completed", timeout=90, what="the LLM job to end")
    job.refresh_from_db()
    samples = scrape(server)
    answered = sum(request["status"] == 200 for request in llm_server.requests)
    assert value(samples, "eventproject_llm_calls_total", outcome="ok") == answered > 2
    assert value(samples, "eventproject_llm_calls_total", outcome="server_error") == 1
    # What the endpoint reported, exactly (the job's share per user is rounded).
    for kind in ("prompt", "completion"):
        reported = tokens_reported(llm_server, f"{kind}_tokens")
        assert value(samples, "eventproject_llm_tokens_total", kind=kind) == reported > 0
    assert value(samples, "eventproject_llm_call_duration_seconds_count") == answered + 1
