"""A newcomer's `make test` passes without Chromium, nginx or Prometheus (their tests are skipped,
saying how to install them); CI, which sets REQUIRE_BROWSER=1, REQUIRE_NGINX=1 and
REQUIRE_PROMETHEUS=1, fails instead of skipping them."""

import os
import re
import subprocess
import sys

from tests.cluster import ROOT


def run_tests(tmp_path, *modules: str, **env: str) -> subprocess.CompletedProcess:
    """pytest on modules of tests in a child process, on a database of its own (never created
    when nothing runs), with the programs they need pointed where there are none."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", *modules, "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={
            **os.environ,
            **{name: str(tmp_path / "not-here") for name in ("CHROMIUM", "NGINX", "PROMETHEUS", "PROMTOOL")},
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "TEST_SQLITE_NAME": str(tmp_path / "test_db.sqlite3"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,  # only an upper bound: a loaded machine stretches a pytest start-up ten times
    )


# Each module with the flag that makes its tool required, and what it says to install.
TOOLS = {
    "tests/test_admin_browser.py": ("REQUIRE_BROWSER", "apt-get install chromium"),
    "tests/test_nginx.py": ("REQUIRE_NGINX", "apt-get install nginx-light"),
    "tests/test_prometheus.py": ("REQUIRE_PROMETHEUS", "apt-get install prometheus"),
}


def test_without_chromium_nginx_and_prometheus_their_tests_are_skipped_saying_how_to_install_them(
    tmp_path, monkeypatch
):
    for flag, _ in TOOLS.values():
        monkeypatch.delenv(flag, raising=False)
    result = run_tests(tmp_path, *TOOLS)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ \d+ skipped in [\d.]+s =+", summary), summary  # all of them, nothing else
    for _, install in TOOLS.values():
        assert install in result.stdout, install
    assert "need Chromium at" in result.stdout
    assert not (tmp_path / "test_db.sqlite3").exists()


def test_where_each_tool_is_required_its_absence_fails_the_run(tmp_path):
    result = run_tests(tmp_path, *TOOLS, **{flag: "1" for flag, _ in TOOLS.values()})
    assert result.returncode != 0
    for module, (flag, _) in TOOLS.items():  # each module's collection fails, naming its own flag
        assert f"ERROR collecting {module}" in result.stdout, result.stdout
        assert f"{flag}=1: these tests must run here" in result.stdout, result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]
