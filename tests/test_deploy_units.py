"""The systemd units in deploy/: systemd's own checker accepts them, and they keep the promises the
README makes about stopping and restarting. The web unit's command line is the one the serving
tests run (tests/servers.py); the cluster unit's is tests/cluster.py's."""

import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.cluster import wait_for
from tests.servers import DEPLOY, INSTALL_PATH, ROOT, free_port, unit
from tests.tools import unavailable

UNITS = ["eventproject-web.service", "eventproject-cluster@.service"]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(False, reason="systemd-analyze is here")
if SYSTEMD_ANALYZE is None:
    needs_systemd_analyze = unavailable(
        "systemd-analyze is missing: install systemd's tools (`sudo apt-get install systemd`) "
        "to check the units in deploy/",
        required_by="REQUIRE_SYSTEMD_ANALYZE",
    )


def verify(tmp_path, units: dict[str, str]) -> str:
    """systemd-analyze verify's complaints about these unit texts ("" when it has none)."""
    for name, text in units.items():
        # verify checks that ExecStart's program exists: point the units at this checkout.
        (tmp_path / name).write_text(text.replace(INSTALL_PATH, str(ROOT)))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(tmp_path / name) for name in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"{result.stdout}{result.stderr}" + (
        f"\nexit status {result.returncode}" if result.returncode else ""
    )


def test_every_unit_in_deploy_is_checked_here():
    assert sorted(path.name for path in DEPLOY.glob("*.service")) == sorted(UNITS)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_units_without_a_word(tmp_path):
    assert verify(tmp_path, {name: (DEPLOY / name).read_text() for name in UNITS}) == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_speaks_up_about_a_misspelt_setting(tmp_path):
    """So that the test above is worth something: verify exits 0 on a unit systemd half ignores,
    only its output says so."""
    text = (DEPLOY / UNITS[1]).read_text().replace("KillMode=", "KillMod=")
    assert "Unknown key 'KillMod'" in verify(tmp_path, {UNITS[1]: text})


@pytest.mark.parametrize("name", UNITS)
def test_a_stop_signals_the_main_process_then_kills_what_is_left_after_a_timeout(name):
    service = unit(name)
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the main process only (the django-q2 hang)
    assert 10 <= int(service["TimeoutStopSec"][0]) <= 60
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"][0] == "/etc/eventproject/eventproject.env"


def test_several_clusters_can_run_on_one_machine():
    service = unit("eventproject-cluster@.service")
    assert service["ExecStart"] == [f"{ROOT}/.venv/bin/python manage.py qcluster"]
    assert service["EnvironmentFile"][1] == "-/etc/eventproject/cluster-%i.env"  # optional, per instance


def test_a_reload_after_the_release_symlink_moves_serves_the_new_release(tmp_path):
    """An upgrade switches the install folder, a symlink, to a new release, then reloads. Under
    systemd gunicorn starts in the folder the symlink resolved to and would go back there at every
    reload; the unit's PWD (the symlink's own path) is what makes the reload follow it. Shown with
    two one-line releases, started as systemd starts a process (no PWD of the shell's)."""
    service = unit("eventproject-web.service")
    assert f"PWD={service['WorkingDirectory'][0]}" in service["Environment"]
    for release in ("one", "two"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "app.py").write_text(
            f"def app(environ, start):\n    start('200 OK', [])\n    return [b'{release}']\n"
        )
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "one")
    port = free_port()
    server = subprocess.Popen(
        [f"{sys.prefix}/bin/gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "app:app"],
        cwd=current.resolve(),
        env={"PATH": os.environ["PATH"], "PWD": str(current)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answer() -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.read()
        except OSError:
            return None

    try:
        wait_for(lambda: answer() == b"one", timeout=30, what="the first release answering")
        current.unlink()
        current.symlink_to(tmp_path / "two")
        server.send_signal(signal.SIGHUP)  # what `systemctl reload` sends
        wait_for(lambda: answer() == b"two", timeout=30, what="the new release answering after the reload")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
