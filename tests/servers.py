"""A real production web server for integration tests: gunicorn started with the command line of
deploy/eventproject-web.service (the deployment's install path replaced by this checkout), DEBUG
off, on the test database, answering on a free loopback port."""

import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

from django.conf import settings

from tests.cluster import ROOT, test_database_url, wait_for

DEPLOY = ROOT / "deploy"
INSTALL_PATH = "/opt/eventproject"  # where the units expect the checkout


def unit(name: str) -> dict[str, list[str]]:
    """The settings of a unit's [Service] section in deploy/ (each with every value it is given),
    this checkout in place of the install path."""
    found, section = {}, ""
    for line in (DEPLOY / name).read_text().replace(INSTALL_PATH, str(ROOT)).splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def production_env(**env: str) -> dict[str, str]:
    """The environment of a production process on the test database (clusters need it too)."""
    return {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "DEBUG": "0",
        # This process's key: clusters sign their heartbeats, and this process the tasks it
        # enqueues, with it (clusters started by tests/cluster.py use it too).
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        **env,
    }


class WebServer:
    """gunicorn as deploy/eventproject-web.service runs it; stop() is SIGTERM to the master only,
    as the unit's KillMode=mixed does, then SIGKILL of the group after a timeout."""

    def __init__(self, log: Path, **env: str):
        self.port = free_port()
        self.log = log
        self.handle = log.open("ab")
        (command,) = unit("eventproject-web.service")["ExecStart"]
        self.process = subprocess.Popen(
            shlex.split(command),
            cwd=ROOT,
            env=production_env(
                **{
                    "WEB_BIND": f"127.0.0.1:{self.port}",
                    "WEB_CONCURRENCY": "2",
                    "PROMETHEUS_MULTIPROC_DIR": str(log.parent / f"metrics-{self.port}"),
                    **env,
                }
            ),
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(self._answers, timeout=30, what=f"gunicorn to answer; it said:\n{self.output()}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) over a new connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a killed master
            os.killpg(self.process.pid, signal.SIGKILL)
        self.handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")
