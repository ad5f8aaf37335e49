import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.console import follow, summary_line, terminal_safe
from jobs.errors import JobError
from jobs.services import job_start

DEMO_LOGIN = ("admin", "admin")


class Command(BaseCommand):
    help = (
        "Run the whole service on this machine: the web server (admin and API) and a task cluster, "
        "then start an extraction job for every user needing one and follow it. Ctrl-C stops everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--addrport", default="127.0.0.1:8000", help="web server address (default %(default)s)"
        )
        parser.add_argument("--no-extract", action="store_true", help="only serve, start no job")

    def handle(self, *args, addrport, no_extract, **options):
        host, _, port = addrport.rpartition(":")
        if not host or not port.isdecimal():
            raise CommandError(f"--addrport must look like 127.0.0.1:8000, got {addrport!r}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            raise CommandError(
                f"{host}:{port} is already taken by another program: stop it, or give --addrport"
            )
        login = self._demo_login()
        # Ctrl-C, a plain `kill` or a closed terminal stop everything, even where a launcher made us
        # ignore SIGINT: the children, in sessions of their own, hear of it only from us.
        for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(stop_signal, signal.default_int_handler)
        manage = [sys.executable, sys.argv[0]]
        # Their own sessions: Ctrl-C reaches only this process, which then stops each child with one
        # SIGTERM (a cluster hit by both the terminal's SIGINT and a SIGTERM can hang while stopping).
        children = [
            subprocess.Popen([*manage, "runserver", addrport, "--noreload"], start_new_session=True),
            subprocess.Popen([*manage, "qcluster"], start_new_session=True),
        ]
        try:
            self._wait_for_port(host, int(port), children)
            self.stdout.write(
                f"serving the admin at http://{addrport}/admin/, the API at http://{addrport}/api/v1/ "
                f"(docs: http://{addrport}/api/docs/)"
            )
            if login:
                self.stdout.write(f"log in as {login[0]} / {login[1]}")
            if not no_extract:
                self._extract(lambda: self._check(children))
            self.stdout.write(f"still serving at http://{addrport}/ — press Ctrl-C to stop")
            while True:
                self._check(children)
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("\nstopping …")
        finally:
            self._stop(children)

    def _demo_login(self) -> tuple[str, str] | None:
        """In DEBUG, with no user at all yet, create a superuser with a well-known password."""
        users = get_user_model().objects
        if not settings.DEBUG or users.exists():
            return None
        users.create_superuser(DEMO_LOGIN[0], "admin@example.com", DEMO_LOGIN[1])
        return DEMO_LOGIN

    def _wait_for_port(self, host: str, port: int, children, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(child.poll() is not None for child in children):
                raise CommandError("the web server or the cluster failed to start")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"the web server did not answer on {host}:{port} within {timeout:.0f} s")

    @staticmethod
    def _check(children) -> None:
        if any(child.poll() is not None for child in children):
            raise CommandError("a child process stopped; shutting down")

    def _extract(self, check: Callable[[], None]) -> None:
        try:
            job = job_start()
        except JobError as exc:
            self.stderr.write(terminal_safe(f"could not start a job: {exc}"))
            return
        self.stdout.write(f"started job {job.id}: {job.total_items} users needing extraction")
        self.stdout.write(summary_line(follow(job, self.stdout, each_poll=check)))

    def _stop(self, children) -> None:
        """SIGTERM to each child's main process; the process groups of all of them are killed if
        they have not ended 30 s later, or at a second Ctrl-C (further signals are then ignored:
        nothing may be left running)."""
        deadline = time.monotonic() + 30
        try:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                child.wait(timeout=max(deadline - time.monotonic(), 0))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(stop_signal, signal.SIG_IGN)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            for child in children:
                child.wait()
