"""A newcomer's `make test` passes without Chromium, nginx or Prometheus (their tests are skipped,
saying how to install them); CI, which sets REQUIRE_BROWSER=1, REQUIRE_NGINX=1 and
REQUIRE_PROMETHEUS=1, fails instead of skipping them."""

import os
import re
import subprocess
import sys

import pytest

from tests.cluster import ROOT


def run_browser_tests(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """pytest on the browser tests in a child process, on a database of its own (never created:
    nothing runs), as on a machine without Chromium."""
    return run_tests(tmp_path, "tests/test_admin_browser.py", **env)


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


PROXY_AND_MONITORING = ("tests/test_nginx.py", "tests/test_prometheus.py")


def test_without_nginx_and_prometheus_their_tests_are_skipped_saying_how_to_install_them(
    tmp_path, monkeypatch
):
    for flag in ("REQUIRE_NGINX", "REQUIRE_PROMETHEUS"):
        monkeypatch.delenv(flag, raising=False)
    result = run_tests(tmp_path, *PROXY_AND_MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 skipped" in result.stdout
    assert "apt-get install nginx-light" in result.stdout and "apt-get install prometheus" in result.stdout
    assert not (tmp_path / "test_db.sqlite3").exists()


@pytest.mark.parametrize("flag", ["REQUIRE_NGINX", "REQUIRE_PROMETHEUS"])
def test_where_nginx_or_prometheus_is_required_its_absence_fails_the_run(tmp_path, monkeypatch, flag):
    for other in ("REQUIRE_NGINX", "REQUIRE_PROMETHEUS"):
        monkeypatch.delenv(other, raising=False)
    result = run_tests(tmp_path, *PROXY_AND_MONITORING, **{flag: "1"})
    assert result.returncode != 0
    assert f"{flag}=1: these tests must run here" in result.stdout
