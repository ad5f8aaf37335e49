"""gunicorn's settings for eventproject; `gunicorn eventproject.asgi` in this folder reads them.

The worker class follows the application named on the command line (unless -k names one):

- `gunicorn eventproject.asgi` (the deployment's, deploy/eventproject-web.service): uvicorn workers.
  A progress stream (SSE) is a coroutine, not a thread, and each process reads a watched job's
  progress once per poll for all its streams (jobs/api/streams.py); other views run one at a time
  per process on its synchronous thread (eventproject/asgi.py).
- `gunicorn eventproject.wsgi` (Django's usual command): gunicorn's threaded sync workers
  (gthread, WEB_THREADS threads each); a stream holds a thread while it is open.

A worker class that cannot run the application (uvicorn's for the WSGI one, a sync class for the
ASGI one) stops gunicorn at start with a message saying so, instead of answering 500 to everything.

Everything a deployment tunes comes from the environment (the same file the systemd units read):

    WEB_BIND            addresses to listen on, comma-separated (default 127.0.0.1:8000; nginx in front)
    WEB_CONCURRENCY     worker processes (default cores + 1, see `workers` below)
    WEB_THREADS         threads per worker process, with eventproject.wsgi only (default 4)
    WEB_TIMEOUT         seconds a worker may stay silent before it is restarted (default 60)
    WEB_ACCESS_LOG      where the access log goes (default "-", standard output; empty: none)
"""

import multiprocessing
import os
import tempfile
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdecimal() or int(value) < 1:
        raise SystemExit(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# One address or several, comma-separated: loopback for nginx, the machine's own for a load
# balancer's health check and Prometheus on other machines.
bind = [
    address.strip()
    for address in (os.environ.get("WEB_BIND") or "127.0.0.1:8000").split(",")
    if address.strip()
]
# One process more than the cores, not gunicorn's usual 2 × cores + 1: each process already serves
# many connections (uvicorn's event loop, or WEB_THREADS threads), and processes beyond that only
# compete for the cores with the task clusters beside them. Measured on 2 cores while a 2-worker
# drain ran (50 pollers, tests/bench/api.py, 7 runs each): p95 94–169 ms (median 130) with 5
# processes, 63–136 ms (median 76) with 3, which also served more requests a second. A deployment
# whose database is far away (its requests wait more than they compute) may want more.
workers = _env_int("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1)
# No worker_class here: a command-line -k wins, else pick_worker_class() (below) chooses by the
# application. gunicorn itself turns its default sync class into gthread when threads > 1.
threads = _env_int("WEB_THREADS", 4)
timeout = _env_int("WEB_TIMEOUT", 60)
graceful_timeout = 30  # on stop or reload, requests in flight get this long to finish
keepalive = 5
# gunicorn's own belief in X-Forwarded-Proto (https from loopback by default) is off: TRUSTED_PROXIES
# alone says whose is believed (eventproject.proxies), for eventproject.wsgi as for the ASGI worker.
forwarded_allow_ips = ""
# One line per request on stdout (the journal, under systemd), in uvicorn's format.
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# No control socket (gunicorn 25+, for its `gunicornc` tool): at its default path, one per account
# in the home folder, each gunicorn of an account removed the previous one's, and a service user
# whose home it cannot write logged an error at every start. `systemctl` is the control here.
control_socket_disable = True
# Workers import the application themselves, so `systemctl reload` (SIGHUP) brings in new code.
preload_app = False

# /metrics adds up request latency over the worker processes through files in this folder
# (prometheus-client's multiprocess mode). It must be set before any worker imports the client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the units set it; read again on each reload
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="eventproject-metrics-")


ASGI_WORKER = "eventproject.web_worker.Worker"


def pick_worker_class(server):
    """The worker class that fits the application: uvicorn's for the ASGI one, gthread (gunicorn's
    default class, sync, becomes gthread when threads > 1) for the WSGI one. A -k that cannot run
    the application is refused."""
    application = (getattr(server.app, "app_uri", None) or server.cfg.wsgi_app or "").split(":")[0]
    raw = server.cfg.settings["worker_class"].get()
    chosen = raw if isinstance(raw, str) else f"{raw.__module__}.{raw.__name__}"
    runs_asgi = chosen == ASGI_WORKER or "uvicorn" in chosen.lower()
    if application.endswith("asgi") and not runs_asgi:
        if chosen != "sync":  # gunicorn's default: nobody asked for it
            raise RuntimeError(
                f"{application} is an ASGI application: the {chosen} worker class cannot run it. "
                "Leave -k out (uvicorn workers are chosen), or serve eventproject.wsgi instead."
            )
        server.cfg.set("worker_class", ASGI_WORKER)
        server.worker_class = server.cfg.worker_class
    elif not application.endswith("asgi") and runs_asgi:
        raise RuntimeError(
            f"{application or 'the application'} is a WSGI application: the {chosen} worker class "
            "(ASGI) cannot run it. Serve eventproject.asgi, or leave -k out (gthread is chosen)."
        )


def on_reload(server):
    """The configuration is read again on a reload (SIGHUP): choose again."""
    pick_worker_class(server)


def on_starting(server):
    """The worker class is chosen; a fresh start begins with empty figures (files of an earlier
    run would count twice)."""
    pick_worker_class(server)
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.db"):
        leftover.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
