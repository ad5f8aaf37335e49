"""Imports run as tasks: a row per import with its status, counts and line-numbered report, exactly
as `import_data` reports; checkpointed with every batch, so a worker that dies is taken over
without losing or counting anything twice. (A real cluster killed mid-import: test_import_cluster.)"""

import gzip
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django_q.models import OrmQ

from eventproject.db import DatabaseNow
from extraction.imports import import_create, import_run, imports_heal
from extraction.models import Behavior, DataImport, UserProfile
from tests.cluster import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = "user_id,action,timestamp,item_id,app_id,media_id,poi_id,duration\n"


def behaviors_csv(rows: int, *, bad_every: int = 0) -> bytes:
    lines = [HEADER]
    for n in range(rows):
        when = (
            "not a time"
            if bad_every and n % bad_every == bad_every - 1
            else f"2024-06-01 10:{n // 60 % 60:02d}:{n % 60:02d}"
        )
        lines.append(f"u{n % 7},browse,{when},P{n},,,,5\n")
    return "".join(lines).encode()


@pytest.fixture
def imports_dir(imports_dir, settings):
    settings.IMPORTS_BATCH_ROWS = 10  # batches of ten: checkpoints to count
    return imports_dir


def upload(content: bytes, name: str = "log.csv", kind: str = "behaviors") -> DataImport:
    return import_create(kind=kind, upload=SimpleUploadedFile(name, content))


def test_an_import_reports_exactly_as_import_data_does(imports_dir, run, write_file):
    content = behaviors_csv(50, bad_every=20)
    data_import = upload(content)
    assert data_import.status == "queued" and (imports_dir / data_import.stored_name).exists()
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert data_import.status == "completed" and data_import.percent == 100.0
    assert not (imports_dir / data_import.stored_name).exists()  # the file goes, the report stays
    from extraction.imports import import_report, import_summary_text

    Behavior.objects.all().delete()
    UserProfile.objects.all().delete()
    out, err = run("import_data", "behaviors", str(write_file("log.csv", content)))
    assert import_summary_text(data_import) == out.strip()
    assert (
        import_summary_text(data_import)
        == "behaviors: read 50, imported 48, updated 0, duplicates 0, rejected 2"
    )
    command_report = [line.split("log.csv:", 1)[1] for line in err.splitlines()]
    assert [line.split("log.csv:", 1)[1] for line in import_report(data_import)] == command_report
    assert import_report(data_import)[0] == "log.csv:21: unparseable timestamp 'not a time'"


def test_a_continuation_whose_first_row_is_short_goes_on_and_errors_name_the_upload(imports_dir, settings):
    """The header is checked by its own names: a short row first after a checkpoint is one bad row."""
    settings.IMPORTS_BATCH_ROWS, settings.IMPORTS_BUDGET_SECONDS = 10, 0  # a pause after each batch
    lines = behaviors_csv(20).decode().splitlines(keepends=True)
    lines[11] = "u_short\n"  # the 11th row: the first the continuation reads
    data_import = upload("".join(lines).encode())
    for _ in range(3):
        import_run(data_import.id)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.rows_read, data_import.imported) == ("completed", 20, 19)
    assert data_import.errors == [[12, "missing action"]]
    bad = upload(b"user_id,when\nu1,x\n", name="mine.csv")
    import_run(bad.id)
    bad.refresh_from_db()
    assert bad.status == "failed" and bad.error.startswith("mine.csv: no column for action")


def test_a_worker_that_died_mid_import_is_taken_over_from_its_checkpoint(imports_dir, settings):
    data_import = upload(behaviors_csv(100))
    # A first worker claims it and stops after three batches (as if it died right there).
    batches = []

    def die_after_three(original):
        def checkpoint(summary, line, position):
            batches.append(line)
            if len(batches) > 3:
                raise SystemExit("killed")  # nothing of this batch is committed
            return original(summary, line, position)

        return checkpoint

    import extraction.importers as importers

    real = importers.import_file

    def dying_import_file(*args, checkpoints, **kwargs):
        checkpoints.save = die_after_three(checkpoints.save)
        return real(*args, checkpoints=checkpoints, **kwargs)

    importers_import_file = pytest.MonkeyPatch()
    importers_import_file.setattr("extraction.imports.import_file", dying_import_file)
    with pytest.raises(SystemExit):
        import_run(data_import.id)
    importers_import_file.undo()
    OrmQ.objects.all().delete()  # that worker had taken the import's task from the queue
    data_import.refresh_from_db()
    assert (data_import.status, data_import.line, data_import.rows_read) == ("running", 31, 30)
    assert Behavior.objects.count() == 30  # the fourth batch rolled back with its checkpoint

    import_run(data_import.id)  # another worker, while the lease still runs: it is not taken
    data_import.refresh_from_db()
    assert data_import.rows_read == 30
    assert imports_heal() == []  # nor rung: its worker may be alive

    DataImport.objects.filter(id=data_import.id).update(lease_expires_at=DatabaseNow(-1))
    assert imports_heal() == [f"import {data_import.id}: rang it again"]
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.rows_read, data_import.imported, data_import.duplicates) == (
        "completed",
        100,
        100,
        0,
    )
    assert Behavior.objects.count() == 100


def test_a_late_checkpoint_of_a_worker_whose_import_was_taken_over_is_refused(imports_dir, monkeypatch):
    """A worker frozen past its lease wakes up and tries to write its batch: the checkpoint finds
    another claim token, so the batch rolls back with it and the worker stops."""
    data_import = upload(behaviors_csv(30))
    other = uuid.uuid4()
    import extraction.importers as importers

    real = importers.import_file

    def taken_over_meanwhile(*args, **kwargs):
        # Frozen right after its claim, past its lease: another worker took the import over.
        DataImport.objects.filter(id=data_import.id).update(claim_token=other)
        return real(*args, **kwargs)

    monkeypatch.setattr("extraction.imports.import_file", taken_over_meanwhile)
    import_run(data_import.id)  # returns quietly: LeaseLost is the end of this worker's part
    data_import.refresh_from_db()
    assert (data_import.claim_token, data_import.line, data_import.rows_read) == (other, 0, 0)
    assert Behavior.objects.count() == 0


def test_an_import_that_keeps_killing_its_workers_fails_saying_so(imports_dir, settings):
    settings.IMPORTS_MAX_TAKEOVERS = 2
    data_import = upload(behaviors_csv(10))
    DataImport.objects.filter(id=data_import.id).update(
        status="running", claim_token=uuid.uuid4(), takeovers=2, lease_expires_at=DatabaseNow(-1)
    )
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert data_import.status == "failed" and "its worker stopped 3 times" in data_import.error
    assert not (imports_dir / data_import.stored_name).exists()


def test_a_task_that_spent_its_budget_queues_its_continuation(imports_dir, settings, monkeypatch):
    settings.IMPORTS_BUDGET_SECONDS = 0  # every checkpoint is past the budget
    data_import = upload(behaviors_csv(25))
    rung = []
    monkeypatch.setattr("extraction.imports.import_ring", lambda import_id, mark: rung.append(import_id))
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.rows_read, rung) == ("queued", 10, [data_import.id])
    for _ in range(5):
        import_run(data_import.id)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.imported) == ("completed", 25)


def test_a_file_that_cannot_be_imported_fails_with_the_reason(imports_dir):
    data_import = upload(b"name,age\nx,3\n", name="people.csv")
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert (
        data_import.status == "failed" and "no column for user_id, action, occurred_at" in data_import.error
    )


def test_a_missing_file_names_the_shared_storage_it_needs(imports_dir):
    data_import = upload(behaviors_csv(3))
    (Path(imports_dir) / data_import.stored_name).unlink()
    import_run(data_import.id)
    data_import.refresh_from_db()
    assert data_import.status == "failed" and "IMPORTS_DIR must be shared storage" in data_import.error


def test_profiles_import_too_and_reimporting_adds_nothing(imports_dir):
    content = 'user_id,city,interests\nu1,上海,"SUV,新能源"\nu2,北京,\n'.encode()
    for expected in ((2, 0), (0, 2)):
        data_import = upload(content, name="profiles.csv", kind="profiles")
        import_run(data_import.id)
        data_import.refresh_from_db()
        assert (data_import.imported, data_import.duplicates) == expected
    assert UserProfile.objects.get(user_id="u1").attributes == {
        "city": "上海",
        "interests": ["SUV", "新能源"],
    }


def test_a_slow_line_keeps_its_worker_and_is_refused_as_one_bad_line(imports_dir, settings):
    """A 300 MB line of 0xFF in a 0.3 MB .jsonl.gz takes seconds to skip, longer than the lease:
    the lease is renewed by time meanwhile, so nobody takes the healthy worker's import over, and
    the line is one rejected row; the rows after it are imported."""
    settings.IMPORTS_LEASE_SECONDS, settings.IMPORT_MAX_LINE_CHARS = 1, 1024
    first = '{"user_id": "u1", "action": "browse", "timestamp": "2024-06-01 10:00:00"}\n'
    last = '{"user_id": "u2", "action": "browse", "timestamp": "2024-06-01 10:00:00"}\n'
    content = gzip.compress(first.encode() + b"\xff" * 300_000_000 + b"\n" + last.encode(), compresslevel=9)
    data_import = upload(content, name="log.jsonl.gz")
    worker = threading.Thread(target=lambda: (import_run(data_import.id), connection.close()))
    worker.start()
    claimed = wait_for(
        lambda: (
            DataImport.objects.filter(id=data_import.id, status="running")
            .values_list("lease_expires_at", flat=True)
            .first()
        ),
        timeout=10,
        what="the import to start",
    )
    wait_for(
        lambda: (
            (DataImport.objects.get(id=data_import.id).lease_expires_at or claimed)
            > claimed + timedelta(seconds=1.5)
        ),
        timeout=10,
        what="the lease to be renewed while the worker reads the long line",
    )
    assert DataImport.objects.get(id=data_import.id).line <= 1  # no checkpoint since: renewed by time
    import_run(data_import.id)  # another worker, rung by healing: the import is not free to take
    worker.join(timeout=60)
    data_import.refresh_from_db()
    assert (data_import.status, data_import.takeovers, data_import.imported, data_import.rejected) == (
        "completed",
        0,
        2,
        1,
    )
    assert data_import.errors == [[2, "line longer than 1,024 characters (IMPORT_MAX_LINE_CHARS)"]]
