"""Benchmark: many clients polling a job's progress over HTTP while a 1,000,000-item job runs.

    python -m tests.bench.api [--items 1000000] [--clients 8] [--seconds 20]

On a fresh PostgreSQL database: a gunicorn server on loopback (2 workers × 4 threads), a qcluster
with 2 workers draining a job of `--items` items with the no-op extractor, and `--clients` client
processes each polling /api/v1/jobs/N/progress/ back to back with keep-alive and If-None-Match.
Everything shares this 2-core machine, so the figures include that contention.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

from tests.bench.common import ROOT, backend_urls, child_env, print_table, qcluster

EXTRACTORS = "noop=tests.extractors.NoopExtractor"
PORT = 8765


def poll(job_id: int, token: str, seconds: float, results) -> None:
    """One client: poll the progress endpoint back to back; report (status code, ms) per request."""
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    headers = {"Authorization": f"Token {token}"}
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        connection.request("GET", f"/api/v1/jobs/{job_id}/progress/", headers=headers)
        response = connection.getresponse()
        response.read()
        samples.append((response.status, (time.perf_counter() - start) * 1000))
        if etag := response.getheader("ETag"):
            headers["If-None-Match"] = etag
    results.put(samples)


def setup(url: str, items: int) -> tuple[int, str]:
    """Migrate, create `items` users and a queued no-op job over them, and an API token."""
    os.environ.update(child_env(url, EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS))
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from eventproject.db import tables_analyze
    from extraction.models import UserProfile
    from extraction.services import profiles_upsert
    from jobs.services import job_start

    call_command("migrate", verbosity=0)
    for start in range(0, items, 50_000):
        profiles_upsert({f"p{i:07d}": {} for i in range(start, min(start + 50_000, items))})
    tables_analyze(UserProfile)
    job = job_start(extractor="noop", enqueue=False)
    poller = User.objects.create_user("poller")
    poller.groups.add(Group.objects.get(name="viewers"))  # reading progress needs jobs.view_job
    token = Token.objects.create(user=poller).key
    return job.id, token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    options = parser.parse_args()

    url = backend_urls("bench_api", ["postgresql"])["postgresql"]
    print(f"creating {options.items:,} users and a job …", file=sys.stderr)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        job_id, token = pool.apply(setup, (url, options.items))
    env = child_env(
        url,
        EXTRACTION_EXTRA_EXTRACTORS=EXTRACTORS,
        Q_WORKERS="2",
        DEBUG="0",
        SECRET_KEY="bench-" + "k" * 30 + "-only-for-this-loopback-benchmark-0123456789",
        ALLOWED_HOSTS="127.0.0.1",
        WEB_ACCESS_LOG="",  # gunicorn.conf.py logs every request otherwise
        API_READ_RATE="1000000/minute",  # the benchmark measures the endpoint, not the throttle
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "eventproject.wsgi",
            "-w",
            "2",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        with qcluster(env):
            subprocess.run(
                [sys.executable, "manage.py", "resume_jobs"],
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while True:  # the server is up and the job is running
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                    connection.request(
                        "GET", f"/api/v1/jobs/{job_id}/progress/", headers={"Authorization": f"Token {token}"}
                    )
                    progress = json.loads(connection.getresponse().read())
                    if progress["status"] == "running" and progress["processed"] > 0:
                        break
                except (OSError, KeyError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server or the job did not start")
                time.sleep(0.5)
            queue = context.Queue()
            clients = [
                context.Process(target=poll, args=(job_id, token, options.seconds, queue))
                for _ in range(options.clients)
            ]
            for client in clients:
                client.start()
            samples = [sample for _ in clients for sample in queue.get()]
            for client in clients:
                client.join()
            connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)  # the old one timed out
            connection.request(
                "GET", f"/api/v1/jobs/{job_id}/progress/", headers={"Authorization": f"Token {token}"}
            )
            after = json.loads(connection.getresponse().read())
    finally:
        server.terminate()
        server.wait(timeout=60)

    latencies = sorted(ms for _, ms in samples)
    codes = {code: sum(1 for c, _ in samples if c == code) for code in sorted({c for c, _ in samples})}
    print_table(
        "Progress endpoint under polling",
        f"PostgreSQL; gunicorn 2 workers × 4 threads on loopback; qcluster 2 workers draining a job of "
        f"{options.items:,} no-op items; {options.clients} client processes polling back to back for "
        f"{options.seconds:.0f} s with keep-alive and If-None-Match; all on one 2-core machine.",
        [
            ("requests/s", "-", {"postgresql": f"{len(samples) / options.seconds:,.0f}"}),
            ("p50 latency, ms", "-", {"postgresql": f"{statistics.median(latencies):.1f}"}),
            ("p95 latency, ms", "-", {"postgresql": f"{statistics.quantiles(latencies, n=20)[-1]:.1f}"}),
            ("responses by status", "-", {"postgresql": ", ".join(f"{c}: {n}" for c, n in codes.items())}),
            ("job processed meanwhile", "-", {"postgresql": f"{after['processed']:,} of {after['total']:,}"}),
        ],
        ["postgresql"],
    )


if __name__ == "__main__":
    main()
