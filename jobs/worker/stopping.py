"""Whether this worker's cluster is stopping (SIGTERM or Ctrl-C to its main process: a restart, an
upgrade, `systemctl stop`).

django-q2 lets a worker finish the task it runs before the cluster stops, and a drain runs for up
to JOBS_DRAIN_BUDGET_SECONDS: a busy cluster outlived any stop timeout and was always killed. The
flag is a multiprocessing event made when this module is first imported, in the cluster's main
process before it forks its workers (jobs' qcluster command imports it), so they all share it: the
main process sets it as the stop begins, and drains stop claiming, chunks stop extracting and
commit what they did, and each drain leaves its place to a continuation in the queue.

In any other process (the web server, `extract --sync`) nothing sets it.
"""

import multiprocessing

_STOPPING = multiprocessing.Event()


def cluster_stopping() -> bool:
    return _STOPPING.is_set()


def cluster_stop_begin() -> None:
    """Called by the cluster's main process on SIGTERM or SIGINT (safe in a signal handler)."""
    _STOPPING.set()
