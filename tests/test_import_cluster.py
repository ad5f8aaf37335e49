"""A real cluster imports an uploaded file; killed in the middle (SIGKILL, every process), the import
is taken over by the next cluster from its last checkpoint and ends with exact counts."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from extraction.imports import import_create
from extraction.models import Behavior
from tests.cluster import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROWS = 30_000


@pytest.fixture
def cluster_env(settings, tmp_path):
    settings.IMPORTS_DIR = tmp_path / "imports"
    return {
        "IMPORTS_DIR": str(settings.IMPORTS_DIR),
        "IMPORTS_BATCH_ROWS": "50",
        "IMPORTS_LEASE_SECONDS": "3",
        "JOBS_HEAL_SECONDS": "1",
        "Q_WORKERS": "2",
    }


def big_import():
    lines = ["user_id,event_time,action,item,duration,app,media,poi,price,page_url\n"]
    lines += [f"u{n % 500},2024-06-01 10:00:{n % 60:02d}.{n:06d},browse,P{n},3,,,,,\n" for n in range(ROWS)]
    return import_create(kind="behaviors", upload=SimpleUploadedFile("big.csv", "".join(lines).encode()))


def test_an_import_whose_cluster_is_stopped_pauses_at_its_next_checkpoint(cluster_env, clusters):
    """SIGTERM to the cluster's main process (a restart): the import used to run on to its end or
    its budget, the cluster waiting for it until killed at the stop timeout."""
    data_import = big_import()
    first = clusters(**cluster_env)
    wait_for(
        lambda: type(data_import).objects.get(id=data_import.id).rows_read >= 1_000,
        timeout=60,
        what=f"the import to be under way; cluster said:\n{first.output()}",
    )
    first.terminate()
    first.process.wait(timeout=5)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.claim_token) == ("queued", None)  # its continuation rung
    assert data_import.rows_read < ROWS
    second = clusters(**cluster_env)
    wait_for(
        lambda: type(data_import).objects.get(id=data_import.id).status == "completed",
        timeout=90,
        what=f"the import to finish; cluster said:\n{second.output()}",
    )
    assert Behavior.objects.count() == ROWS


def test_an_import_whose_cluster_is_killed_mid_way_is_finished_by_the_next_one(cluster_env, clusters):
    data_import = big_import()
    first = clusters(**cluster_env)

    def under_way():
        data_import.refresh_from_db()
        return data_import.rows_read >= 2_000

    wait_for(under_way, timeout=60, what=f"the import to be under way; cluster said:\n{first.output()}")
    first.kill()
    data_import.refresh_from_db()
    assert data_import.status == "running" and data_import.rows_read < ROWS, "finished before the kill"
    killed_at = data_import.rows_read

    second = clusters(**cluster_env)

    def finished():
        data_import.refresh_from_db()
        return data_import.status in ("completed", "failed")

    wait_for(finished, timeout=90, what=f"the import to finish; cluster said:\n{second.output()}")
    assert data_import.status == "completed", data_import.error
    # Every row exactly once: none lost at the kill, none counted twice after it.
    assert (data_import.rows_read, data_import.imported, data_import.duplicates, data_import.rejected) == (
        ROWS,
        ROWS,
        0,
        0,
    )
    assert Behavior.objects.count() == ROWS
    assert data_import.line == ROWS + 1 and killed_at < ROWS
    # The dead cluster's task is gone with it: healing in the new cluster rang the import again.
    assert f"heal: import {data_import.id}: rang it again" in second.output()
