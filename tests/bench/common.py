"""Shared plumbing for the benchmarks: one throw-away database per backend, run in child processes.

Settings are process-wide, so each backend's measurements run in a child process
whose DATABASE_URL points at a fresh database; the parent collects the figures
(one JSON line per figure) and prints them side by side.
"""

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
        "DEBUG": "1",
        "DJANGO_SETTINGS_MODULE": "eventproject.settings",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@contextmanager
def qcluster(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A real `manage.py qcluster` for the length of the block, stopped (and waited for) after it."""
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
        stop_group(cluster)


def stop_group(process: subprocess.Popen, timeout: float = 45) -> None:
    """SIGTERM to the main process only (gunicorn and qcluster stop their own workers; a group-wide
    SIGTERM can hang django-q2), then SIGKILL of its whole group if it has not ended in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # workers left behind
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


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
