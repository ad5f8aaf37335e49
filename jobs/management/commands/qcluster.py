"""`manage.py qcluster`: django-q2's cluster, whose main process also heals jobs (and imports).

The main process of a django-q2 cluster only waits for its sentinel; here it heals every job when
the cluster starts (so the pending users of a job whose only cluster died flow again at once) and
every JOBS_HEAL_SECONDS (so a dead or frozen worker's chunk and its drain are replaced within a
lease and a few seconds). It overrides django-q2's command of the same name: `jobs` comes before
`django_q` in INSTALLED_APPS.
"""

import logging
import os
import time

from django.conf import settings
from django.db import DatabaseError
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as ClusterCommand

from eventproject.db import connection_reset
from extraction.imports import imports_heal
from jobs.engine import jobs_heal

logger = logging.getLogger("jobs.heal")


class Command(ClusterCommand):
    help = "Start a task cluster that works on jobs and heals them (at start and every JOBS_HEAL_SECONDS)."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (as django-q2's: signing needs it)
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
            return
        heal_while(cluster.sentinel.is_alive)


def heal_while(alive) -> None:
    """Heal at once, then every JOBS_HEAL_SECONDS, until `alive()` says the cluster has stopped."""
    force = True  # a cluster that starts rings every job short of drains, whenever it was last rung
    while alive():
        try:
            for line in [*jobs_heal(force=force), *imports_heal()]:
                logger.info("heal: %s", line)
            force = False
        except DatabaseError as exc:
            logger.warning("could not heal jobs (%s); trying again", exc)
            connection_reset()
        next_heal = time.monotonic() + settings.JOBS_HEAL_SECONDS
        while alive() and time.monotonic() < next_heal:
            time.sleep(0.2)
