"""Benchmark of the foundation: import (rows/s), sample data generation, rules extraction (users/s).

    python -m tests.bench.foundation [--users 20000] [--import-rows 1000000] [--workers 2] [--chunk-size 500]
                                     [--backends sqlite,postgresql] [--only import]

Runs every step on a fresh SQLite file and a fresh PostgreSQL database and prints
the figures side by side with the first version's targets and the raw floor of a
plain COPY on this machine (`--only import`: the import alone). Extraction here is
the plain loop (load a chunk, extract, save) in N processes splitting the users, their garbage
collector set as a cluster's workers' (qcluster's collector_tune); the job engine adds its own
bookkeeping on top, measured by tests/bench/engine.py.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import (
    arguments,
    backend_urls,
    child_env,
    parse_figures,
    print_table,
    report,
    run_child,
    timed,
)

# The first version's targets; the floor is a plain COPY of the same rows into a bare table, measured
# on this 2-core machine when the importer was built.
TARGET_IMPORT = "target ≥ 50,000 on PostgreSQL; raw COPY ≈ 100,000"
TARGET_GENERATE = "target < 60 on PostgreSQL"
TARGET_EXTRACT = "target ≥ 1,000"

LAYOUT_B = ["user_id", "event_time", "action", "item", "duration", "app", "media", "poi", "price", "page_url"]


def write_csv(path: Path, rows: int) -> int:
    """A behaviour file in the second layout, from sample journeys of users imp0000001…"""
    from extraction.sample_data import sample_user

    written, index = 0, 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LAYOUT_B)
        while written < rows:
            index += 1
            for b in sample_user(index, seed=1, prefix="imp").behaviors:
                price = (b.extra or {}).get("price", "")
                writer.writerow(
                    [
                        b.user_id,
                        b.occurred_at.isoformat(),
                        b.action,
                        b.item,
                        b.duration_seconds,
                        b.app,
                        b.media,
                        b.place,
                        price,
                        "",
                    ]
                )
                written += 1
    return written


def step(args: list[str]) -> None:
    """One measurement, in a child process bound to one database."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from extraction.extractors import make_extractor
    from extraction.importers import import_file
    from extraction.models import ExtractedEvent, ExtractionState, UserProfile
    from extraction.services import chunk_extract, extraction_results_save

    name = args[0]
    if name == "setup":
        call_command("migrate", verbosity=0)
    elif name == "import":
        path, rows = Path(args[1]), int(args[2])
        seconds = timed(lambda: import_file("behaviors", path))
        report("import_rows_per_s", rows / seconds)
        seconds = timed(lambda: import_file("behaviors", path))
        report("reimport_rows_per_s", rows / seconds)
    elif name == "generate":
        users = int(args[1])
        report(
            "generate_seconds", timed(lambda: call_command("generate_sample_data", users=users, verbosity=0))
        )
    elif name == "extract":
        from jobs.management.commands.qcluster import collector_tune

        collector_tune()  # as a cluster's workers run
        part, parts = (int(x) for x in args[1].split("/"))
        chunk = int(args[2])
        extractor = make_extractor("rules")
        ids = list(
            UserProfile.objects.filter(user_id__startswith="u")
            .order_by("user_id")
            .values_list("user_id", flat=True)
        )[part::parts]
        behaviors = 0
        report("started", time.time())  # after the interpreter and Django started
        for start in range(0, len(ids), chunk):
            outcomes = chunk_extract(user_ids=ids[start : start + chunk], extractor=extractor)
            extraction_results_save(outcomes=outcomes, extractor=extractor)
            behaviors += sum(len(outcome.user.behaviors) for outcome in outcomes if outcome.user)
        report("finished", time.time())
        report("behaviors", behaviors)
    elif name == "reset":
        ExtractedEvent.objects.all().delete()
        ExtractionState.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM" if connection.vendor == "sqlite" else "VACUUM ANALYZE")


def extraction_run(url: str, workers: int, users: int, chunk: int) -> tuple[float, float]:
    """Users/s and behaviours/s with `workers` processes splitting the users, from the first worker
    starting to extract to the last one finishing."""
    run_child("tests.bench.foundation", url, "--step", "reset")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.foundation",
                "--step",
                "extract",
                f"{i}/{workers}",
                str(chunk),
            ],
            env=child_env(url),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    figures = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"extraction worker failed ({process.returncode})")
        figures.append(parse_figures(out))
    seconds = max(f["finished"] for f in figures) - min(f["started"] for f in figures)
    return users / seconds, sum(f["behaviors"] for f in figures) / seconds


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--chunk-size", type=int, default=500, help="users per chunk (default 500)")
    parser.add_argument("--import-rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--only", choices=["import"], help="measure the import alone")
    options = parser.parse_args()
    if options.step:
        return step(options.step)

    backends = options.backends.split(",")
    urls = backend_urls(os.environ.get("BENCH_DB_PREFIX", "") + "bench_foundation", backends)
    workdir = Path(tempfile.mkdtemp(prefix="bench-foundation-"))
    csv_path = workdir / "behaviors.csv"
    print(f"writing {options.import_rows} rows to {csv_path} …", file=sys.stderr)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from tests.bench.foundation import write_csv, Path; "
            f"import django; django.setup(); write_csv(Path({str(csv_path)!r}), {options.import_rows})",
        ],
        env=child_env(next(iter(urls.values()))),
        check=True,
    )
    results: dict[str, dict[str, str]] = {}
    for backend, url in urls.items():
        print(f"[{backend}] migrating, importing, generating, extracting …", file=sys.stderr)
        run_child("tests.bench.foundation", url, "--step", "setup")
        figures = run_child(
            "tests.bench.foundation", url, "--step", "import", str(csv_path), str(options.import_rows)
        )
        results[backend] = {
            "import": f"{figures['import_rows_per_s']:,.0f}",
            "reimport": f"{figures['reimport_rows_per_s']:,.0f}",
        }
        if options.only == "import":
            continue
        figures |= run_child("tests.bench.foundation", url, "--step", "generate", str(options.users))
        one = extraction_run(url, 1, options.users, options.chunk_size)
        many = extraction_run(url, options.workers, options.users, options.chunk_size)
        results[backend] |= {
            "generate": f"{figures['generate_seconds']:.1f}",
            "extract_1_users": f"{one[0]:,.0f}",
            "extract_1_behaviors": f"{one[1]:,.0f}",
            "extract_n_users": f"{many[0]:,.0f}",
            "extract_n_behaviors": f"{many[1]:,.0f}",
        }

    def row(label, key, baseline):
        return (label, baseline, {b: results[b].get(key, "-") for b in backends})

    print_table(
        "Foundation benchmark",
        f"{options.import_rows:,} CSV rows (layout 2, sample journeys); {options.users:,} sample users "
        f"(~90 behaviours each); rules extractor, chunks of {options.chunk_size} users, 1 and "
        f"{options.workers} processes, their garbage collector set as a cluster's workers' (timed from the "
        f"first worker's first chunk to the last one's end).",
        [
            row("import, rows/s", "import", TARGET_IMPORT),
            row("re-import (all duplicates), rows/s", "reimport", "-"),
            row(f"generate_sample_data --users {options.users}, s", "generate", TARGET_GENERATE),
            row("rules extraction + save, 1 process, users/s", "extract_1_users", "-"),
            row("  behaviours/s", "extract_1_behaviors", "-"),
            row(
                f"rules extraction + save, {options.workers} processes, users/s",
                "extract_n_users",
                TARGET_EXTRACT,
            ),
            row("  behaviours/s", "extract_n_behaviors", "-"),
        ],
        backends,
    )


if __name__ == "__main__":
    main()
