"""An import parses its rows on a thread of its own, ahead of the batches it writes: the rows, their
errors and the checkpoints still come in line order and with exact counts, an error on that thread
is raised in the importer's, and a pause leaves no thread behind."""

import threading

import pytest

from extraction.import_ahead import AHEAD_CHUNK, ahead
from extraction.importers import Checkpoints, ImportOptions, ImportPaused, import_file
from extraction.models import Behavior

pytestmark = pytest.mark.django_db

ROWS = 3 * AHEAD_CHUNK + 7  # several chunks handed over, the last one short
BAD = {2, AHEAD_CHUNK + 1, 2 * AHEAD_CHUNK + 3, ROWS + 1}  # line numbers (the header is line 1)


def _file(write_file):
    lines = ["user_id,action,timestamp"]
    for line in range(2, ROWS + 2):
        day = "2024-13-01" if line in BAD else f"2024-06-{line % 28 + 1:02d}"
        lines.append(f"u{line % 50},browse,{day} 10:{line % 60:02d}:{line % 59:02d}")
    return write_file("b.csv", "\n".join(lines) + "\n")


def _parsing_threads():
    return [thread for thread in threading.enumerate() if thread.name == "import-parse"]


def test_rows_parsed_ahead_keep_their_order_errors_and_counts(write_file):
    heard = []
    summary = import_file("behaviors", _file(write_file), on_error=lambda line, reason: heard.append(line))
    assert heard == sorted(BAD)
    assert (summary.read, summary.rejected, summary.imported) == (ROWS, len(BAD), ROWS - len(BAD))
    assert Behavior.objects.count() == ROWS - len(BAD)
    assert not _parsing_threads()


def test_a_pause_records_exact_counts_and_leaves_no_parsing_thread(write_file):
    saved = []

    def save(summary, line, position):
        saved.append((line, summary.read, summary.rejected, summary.imported))
        return False  # pause after the first batch

    with pytest.raises(ImportPaused):
        import_file(
            "behaviors",
            _file(write_file),
            ImportOptions(batch_size=AHEAD_CHUNK),
            checkpoints=Checkpoints(save),
        )
    [(line, read, rejected, imported)] = saved
    # Only the lines up to the checkpoint are counted, however far the thread had parsed.
    assert read == line - 1 and imported == AHEAD_CHUNK
    assert rejected == len([bad for bad in BAD if bad <= line])
    assert Behavior.objects.count() == AHEAD_CHUNK
    assert not _parsing_threads()


def test_an_error_on_the_parsing_thread_is_raised_after_the_items_before_it():
    def items():
        yield from range(AHEAD_CHUNK + 3)
        raise OSError("the disk went away")

    got = []
    with pytest.raises(OSError, match="the disk went away"):
        for item in ahead(items()):
            got.append(item)
    assert got == list(range(AHEAD_CHUNK + 3))
    assert not _parsing_threads()
