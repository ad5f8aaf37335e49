"""Real `manage.py qcluster` processes for integration tests, pointed at the test database."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The URL of the database the tests run on (created by pytest-django)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    return f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{host}:{port}/{s['NAME']}"


def process_children() -> dict[int, list[int]]:
    """Every process's children, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        pid, ppid = int(text.split(" ", 1)[0]), int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    return children


def process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    children = process_children()
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


class Cluster:
    """One qcluster process group; stop() is graceful (SIGTERM to the main process, SIGKILL after a
    timeout, as a process manager does), kill() is SIGKILL of every process."""

    def __init__(self, log: Path, *, namespace=None, **env: str):
        """`namespace`: run it in that network namespace (tests/partition.py), its servers' loopback
        URLs rewritten to reach this machine through the namespace's link."""
        self.log = log
        self.handle = log.open("ab")
        env = {"DATABASE_URL": test_database_url(), "DEBUG": "1", **env}
        command = [sys.executable, "manage.py", "qcluster"]
        if namespace:
            env = {
                name: namespace.reach(value) if name.endswith("_URL") else value
                for name, value in env.items()
            }
            command = namespace.command(command)
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers die with it
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def pids(self) -> set[int]:
        """The cluster's processes: main, sentinel, workers, monitor, pusher."""
        return process_tree(self.process.pid)

    def sentinels_children(self) -> list[int]:
        """The processes the cluster's sentinel watches over: its workers, pusher and monitor."""
        children = process_children()
        return [pid for sentinel in children.get(self.process.pid, []) for pid in children.get(sentinel, [])]

    def stop_group(self, timeout: float) -> bool:
        """SIGTERM to every process of the cluster at once (which can hang django-q2), then SIGKILL
        to all after `timeout` as a process manager would; returns whether it stopped by itself."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        return stopped

    def terminate(self) -> None:
        """SIGTERM to the main process: the cluster stops its own workers once their tasks end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL of every process after `timeout`, as a process manager stops it."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):  # stray workers of a killed cluster
            os.killpg(self.process.pid, signal.SIGKILL)
        self.handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop_all(clusters: list[Cluster], timeout: float) -> None:
    """Stop these clusters at once (each as `stop` does), in `timeout` seconds at most in all: a
    cluster whose drain still has minutes of work waits for it, and nothing is learnt from that."""
    for cluster in clusters:
        cluster.terminate()
    deadline = time.monotonic() + timeout
    for cluster in clusters:
        cluster.stop(timeout=max(deadline - time.monotonic(), 0.1))


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
