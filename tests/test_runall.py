"""`make run`'s main job, `manage.py runall`, as a person runs it: it serves and works until stopped,
and whatever stops it (Ctrl-C, a closed terminal, a child that dies, a port already taken) ends
every process it started."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import ROOT, process_tree, wait_for
from tests.cluster import test_database_url as database_url
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def groups_of_processes() -> dict[int, int]:
    """Every live process's process group, read from /proc (zombies left out)."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if state != "Z":
                groups[int(stat.parent.name)] = int(group)
    return groups


class Runall:
    """`manage.py runall` on the test database and a free port, its output in a file."""

    def __init__(self, log: Path, *args: str, port: int | None = None):
        self.port, self.log = port or free_port(), log
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runall", "--addrport", f"127.0.0.1:{self.port}", *args],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url(), "DEBUG": "1"},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups: set[int] = {self.process.pid}  # its own, and each child's (their own sessions)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str) -> None:
        wait_for(lambda: text in self.output(), timeout=60, what=f"runall to say {text!r}; it said:")
        groups = groups_of_processes()
        self.groups |= {groups[pid] for pid in process_tree(self.process.pid) if pid in groups}

    def cluster_group(self) -> int:
        """The process group of its cluster (its own session: runall's second child)."""
        children = sorted(pid for pid in process_tree(self.process.pid) if pid != self.process.pid)
        return next(pid for pid in children if "qcluster" in Path(f"/proc/{pid}/cmdline").read_text())

    def all_ended(self) -> bool:
        return not set(groups_of_processes().values()) & self.groups

    def end(self) -> None:
        """Whatever a failed test left: every process it started, killed."""
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def runall(tmp_path):
    started = []

    def start(*args: str, **kwargs) -> Runall:
        started.append(Runall(tmp_path / f"runall-{len(started)}.log", *args, **kwargs))
        return started[-1]

    yield start
    for each in started:
        each.end()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["Ctrl-C", "the terminal closed"])
def test_a_stop_signal_ends_the_web_server_and_the_cluster_too(runall, stop):
    """A closed terminal (SIGHUP) ended runall alone: its web server and cluster, in sessions of
    their own, went on serving and working."""
    running = runall("--no-extract")
    running.wait_for_output("still serving")
    assert len(running.groups) == 3  # runall's, the web server's, the cluster's
    os.kill(running.process.pid, stop)
    wait_for(running.all_ended, timeout=45, what="every process to end")
    assert "stopping" in running.output()


def test_a_cluster_that_dies_while_a_job_is_followed_ends_it_all(runall, make_users):
    """runall went on following the job, saying "no worker has picked the job up yet", for ever."""
    make_users(20_000)  # a job the cluster is still on when it dies
    running = runall()
    running.wait_for_output("started job")
    os.killpg(running.cluster_group(), signal.SIGKILL)
    assert running.process.wait(timeout=45) == 1
    wait_for(running.all_ended, timeout=45, what="every process to end")
    assert "a child process stopped; shutting down" in running.output()


def test_a_port_already_taken_is_said_at_once_and_nothing_runs(runall):
    """It said it served at the port (another program's), started a job, and only then failed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        running = runall("--no-extract", port=taken.getsockname()[1])
        assert running.process.wait(timeout=30) == 1
    said = running.output()
    assert f"127.0.0.1:{running.port} is already taken" in said and "serving" not in said
