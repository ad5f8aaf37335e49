"""`manage.py qcluster`: django-q2's cluster, whose main process also heals jobs (and imports).

The main process of a django-q2 cluster only waits for its sentinel; here it heals every job when
the cluster starts (so the pending users of a job whose only cluster died flow again at once) and
every JOBS_HEAL_SECONDS (so a dead or frozen worker's chunk and its drain are replaced within a
lease and a few seconds). It overrides django-q2's command of the same name: `jobs` comes before
`django_q` in INSTALLED_APPS.
"""

import gc
import logging
import os
import signal
import time

from django.conf import settings
from django.db import DatabaseError
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as ClusterCommand

from eventproject.db import connection_reset
from eventproject.work import cluster_stop_begin, cluster_stopping
from extraction.extractors import extractors_load
from jobs.healing import heal_all
from jobs.pruning import jobs_prune

logger = logging.getLogger("jobs.heal")

# With JOBS_PRUNE_DAYS set, each heal spends at most this long deleting old items (healing must not
# wait behind a prune of millions), until nothing is left; then it looks again PRUNE_IDLE_SECONDS later.
PRUNE_BUDGET_SECONDS = 1.0
PRUNE_IDLE_SECONDS = 600.0


class Command(ClusterCommand):
    help = "Start a task cluster that works on jobs and heals them (at start and every JOBS_HEAL_SECONDS)."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (as django-q2's: signing needs it)
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        extractors_load()  # before the workers fork: they inherit the modules
        collector_tune()
        cluster = Cluster()
        stop_on_signals()
        cluster.start()
        try:
            if not options.get("run_once"):
                heal_while(lambda: cluster.sentinel.is_alive() and not cluster_stopping())
        finally:
            cluster.stop()  # waits for the workers' tasks, which end at their next checkpoint


def stop_on_signals() -> None:
    """SIGTERM or SIGINT only sets the flag the workers share (eventproject.work.cluster_stopping):
    their drains and imports end at their next checkpoint, and the heal loop ends within 0.2 s and
    stops the cluster, django-q2's stop waiting for those tasks. (django-q2's own handler, which
    these replace, stopped the cluster inside the handler: it blocked there until every worker's
    task ended, an interrupted heal's transaction and its row locks held meanwhile.)"""

    def begin(signum, frame) -> None:
        cluster_stop_begin()

    signal.signal(signal.SIGTERM, begin)
    signal.signal(signal.SIGINT, begin)


# A rules chunk makes a tuple for each behaviour and a dict and a list for each event (about 90 and
# 47 a user), nearly none in a cycle, and keeps them until its commit: at Python's default first
# threshold, 700, the collector ran about 200 times a chunk of 500 users, reading them each time.
COLLECTOR_THRESHOLDS = (50_000, 20, 10)


def collector_tune() -> None:
    """Set the cyclic garbage collector for the workers, which fork from this process and inherit
    it: what is loaded by now (Django, the apps, the extractors) is moved out of its reach for good
    (it lives as long as the process; the workers also keep sharing its memory pages with this one,
    as Python's documentation of gc.freeze advises before a fork), and it runs after every
    COLLECTOR_THRESHOLDS[0] allocations instead of 700. Measured in one process draining 4,000
    sample users (PostgreSQL, two runs each): 1,673 collections (14 full) taking 0.73-0.82 s of its
    2.5-2.7 s of CPU → 14 taking 0.14-0.18 s of 1.9-2.1 s; peak memory unchanged (117 MB).
    """
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def heal_while(alive) -> None:
    """Heal at once, then every JOBS_HEAL_SECONDS, until `alive()` says the cluster has stopped;
    prune old jobs' items between heals when JOBS_PRUNE_DAYS is set."""
    # A cluster that starts has idle workers: it rings the jobs short of drains at once, as many
    # drains in all as it has workers (unless tasks wait in the queue: its workers take those).
    starting = True
    next_prune = time.monotonic()
    while alive():
        try:
            for line in heal_all(force=starting, drains_at_most=settings.Q_WORKERS if starting else None):
                logger.info("heal: %s", line)
            starting = False
            if settings.JOBS_PRUNE_DAYS and time.monotonic() >= next_prune:
                pruned = jobs_prune(days=settings.JOBS_PRUNE_DAYS, budget_seconds=PRUNE_BUDGET_SECONDS)
                if pruned.total:
                    logger.info("prune: deleted %s items of jobs %s", pruned.total, sorted(pruned.items))
                next_prune = time.monotonic() + (0 if not pruned.done else PRUNE_IDLE_SECONDS)
        except DatabaseError as exc:
            logger.warning("could not heal jobs (%s); trying again", exc)
            connection_reset()
        next_heal = time.monotonic() + settings.JOBS_HEAL_SECONDS
        while alive() and time.monotonic() < next_heal:
            time.sleep(0.2)
