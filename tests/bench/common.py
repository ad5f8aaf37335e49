"""Shared plumbing for the benchmarks: one throw-away database per backend, run in child processes.

Settings are process-wide, so each backend's measurements run in a child process
whose DATABASE_URL points at a fresh database; the parent collects the figures
(one JSON line per figure) and prints them side by side.
"""

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FIGURE_PREFIX = "FIGURE "


def arguments(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def pg_database(name: str) -> str:
    """Create (or re-create) a PostgreSQL database and return its URL."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def backend_urls(name: str, backends: list[str]) -> dict[str, str]:
    """A fresh database per backend, removed when the benchmark exits (they hold gigabytes)."""
    urls = {}
    for backend in backends:
        if backend == "postgresql":
            urls[backend] = pg_database(name)
            atexit.register(drop_pg_database, name)
        else:
            folder = tempfile.mkdtemp(prefix=f"{name}-")
            urls[backend] = f"sqlite:///{Path(folder) / 'db.sqlite3'}"
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return urls


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def child_env(url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        # As in production: with DEBUG on, Django keeps each connection's last 9,000 queries, which
        # costs time and shows as memory growing. The key signs the tasks parent and clusters share.
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-key-never-deployed-7d3e9a1c5b2f8e4d6a0c9b7e5f3a1d8c",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": "eventproject.settings",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


STOP_SECONDS = 20  # how long a process gets to stop after SIGTERM before it is killed


def process_stop(process: subprocess.Popen, *, seconds: float = STOP_SECONDS) -> None:
    """Stop a process started with start_new_session=True the way a process manager does (systemd's
    KillMode=mixed): SIGTERM to the main process only, SIGKILL to its whole group after `seconds`.

    A `qcluster` whose children get SIGTERM too can hang for ever (a django-q2 bug), and one that
    hangs anyway is killed: the engine's leases make that safe. Nothing it started is left running.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            print(f"process {process.pid} did not stop in {seconds} s: killed", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children left behind by the main process
    process.wait()


@contextmanager
def qcluster(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A real `manage.py qcluster` for the length of the block, stopped (see process_stop) after it."""
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield cluster
    finally:
        process_stop(cluster)


def cluster_wait_alive(cluster: subprocess.Popen, *, seconds: float = 60) -> None:
    """Wait (in a child with Django set up) until this cluster's own heartbeat says it is working, so
    a measurement starts with it up rather than counting its start-up. (The heartbeat of a cluster
    stopped just before lingers for 3 s: it does not count.)"""
    from django_q.conf import Conf

    from ops.health import cluster_stats

    up = {str(Conf.IDLE), str(Conf.WORKING)}
    deadline = time.monotonic() + seconds
    while not any(stat.pid == cluster.pid and str(stat.status) in up for stat in cluster_stats()):
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster {cluster.pid} did not come up within {seconds} s")
        time.sleep(0.1)


def run_child(module: str, url: str, *args: str, **env: str) -> dict[str, float]:
    """Run `python -m module args` against `url`; return the figures it printed."""
    process = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(url, **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return parse_figures(process.stdout)


def parse_figures(output: str) -> dict[str, float]:
    """The figures a child printed with report(); other lines are passed on to stderr."""
    figures = {}
    for line in output.splitlines():
        if line.startswith(FIGURE_PREFIX):
            figures.update(json.loads(line[len(FIGURE_PREFIX) :]))
        else:
            print(line, file=sys.stderr)
    return figures


def report(name: str, value: float) -> None:
    """Called in a child: hand one figure to the parent."""
    print(FIGURE_PREFIX + json.dumps({name: value}), flush=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def print_table(title: str, conditions: str, rows: list[tuple[str, str, dict[str, str]]], backends) -> None:
    """rows: (figure, baseline or target, {backend: value})."""
    print(f"\n{title}\n{conditions}\n")
    header = ["figure", *backends, "baseline / target"]
    table = [header] + [
        [label, *[values.get(b, "-") for b in backends], baseline] for label, baseline, values in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
