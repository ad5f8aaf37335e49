"""A newcomer's `make test` passes without Chromium (its tests are skipped, saying how to install
it); CI, which sets REQUIRE_BROWSER=1, fails instead of skipping them."""

import os
import re
import subprocess
import sys

from tests.cluster import ROOT


def run_browser_tests(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """pytest on the browser tests in a child process, on a database of its own (never created:
    nothing runs), as on a machine without Chromium."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_admin_browser.py", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={
            **os.environ,
            "CHROMIUM": str(tmp_path / "no-chromium-here"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "TEST_SQLITE_NAME": str(tmp_path / "test_db.sqlite3"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_chromium_the_browser_tests_are_skipped_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("REQUIRE_BROWSER", raising=False)
    result = run_browser_tests(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ \d+ skipped in [\d.]+s =+", summary), summary  # all of them, nothing else
    assert "need Chromium at" in result.stdout and "apt-get install chromium" in result.stdout
    assert not (tmp_path / "test_db.sqlite3").exists()


def test_where_the_browser_is_required_a_missing_chromium_fails_the_run(tmp_path):
    result = run_browser_tests(tmp_path, REQUIRE_BROWSER="1")
    assert result.returncode != 0
    assert "REQUIRE_BROWSER=1: these tests must run here" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]
