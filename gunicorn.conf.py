"""gunicorn's settings for eventproject; `gunicorn eventproject.asgi` in this folder reads them.

The workers are uvicorn's (ASGI): a progress stream (SSE) is a coroutine, not a thread, and each
process reads a watched job's progress once per poll for all its streams (jobs/api/streams.py).
Other views run one at a time per process on its synchronous thread (eventproject/asgi.py).

Everything a deployment tunes comes from the environment (the same file the systemd units read):

    WEB_BIND            address to listen on (default 127.0.0.1:8000; a proxy or load balancer in front)
    WEB_CONCURRENCY     worker processes (default 2 × cores + 1)
    WEB_TIMEOUT         seconds a worker may stay silent before it is restarted (default 60)
    WEB_ACCESS_LOG      where the access log goes (default "-", standard output; empty: none)
"""

import multiprocessing
import os
import tempfile
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{name} must be a positive integer, got {value!r}")
    return int(value)


bind = os.environ.get("WEB_BIND") or "127.0.0.1:8000"
workers = _env_int("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count() + 1)
worker_class = "eventproject.web_worker.Worker"
timeout = _env_int("WEB_TIMEOUT", 60)
graceful_timeout = 30  # on stop or reload, requests in flight get this long to finish
keepalive = 5
# One line per request on stdout (the journal, under systemd), in uvicorn's format.
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Workers import the application themselves, so `systemctl reload` (SIGHUP) brings in new code.
preload_app = False

# /metrics adds up request latency over the worker processes through files in this folder
# (prometheus-client's multiprocess mode). It must be set before any worker imports the client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the units set it; read again on each reload
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="eventproject-metrics-")


def on_starting(server):
    """A fresh start begins with empty figures: files of an earlier run would count twice."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.db"):
        leftover.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
