"""A PostgreSQL server and a Redis server of a test's own, to stop, restart or cut off at will.

The machine's servers are shared with everything else on it: a test that needs its database or
its broker to go away starts one of these instead. Each lives in a folder of its own under the
temporary directory, on a free port, and is removed with it (`close()`, the context manager, or at
exit). A folder whose creating process died (a run killed with SIGKILL) is cleaned up by the next
server started: its process stopped by the PID it recorded, checked to be this folder's.

PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user.
"""

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.servers import free_port

PG_PREFIX = "eventproject-own-pg-"
REDIS_PREFIX = "eventproject-own-redis-"
OWNER_FILE = "owner.pid"  # the PID of the process that made the folder


def pg_bin(program: str) -> str:
    """A PostgreSQL program: from PG_BIN, the server's own folder, or PATH."""
    if folder := os.environ.get("PG_BIN"):
        return str(Path(folder) / program)
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"))
    return str(found[-1]) if found else program


def process_runs(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _works_in(pid: int, folder: Path) -> bool:
    """Whether process `pid` works in `folder` (both servers change into their folder; Redis
    rewrites its command line, so that cannot tell)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(folder)
    except OSError:
        return False


def _kill_if_ours(pid: int, folder: Path, sig: int) -> None:
    """Signal `pid` only if it works in `folder`: a recycled PID is someone else's."""
    if _works_in(pid, folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _new_folder(prefix: str) -> Path:
    _remove_stale(prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    return folder


def _remove_stale(prefix: str) -> None:
    """Stop the servers of folders whose creating process is gone, and remove the folders."""
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being made right now, or not ours
        if process_runs(owner):
            continue
        for pid in _server_pids(folder):
            _kill_if_ours(pid, folder, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _server_pids(folder: Path) -> list[int]:
    """The PIDs the server in `folder` recorded (PostgreSQL's postmaster.pid, Redis's redis.pid)."""
    pids = []
    for name in ("data/postmaster.pid", "redis.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int((folder / name).read_text().split()[0]))
    return pids


class PostgresServer:
    """`initdb` into a folder of its own and serve it on a free port (fsync off, small settings).

    Listens on 127.0.0.1, and on the host side of each network namespace in `reachable_from`
    (whose network it trusts too). Authentication is trust, user `postgres`.
    """

    def __init__(self, *, reachable_from: Sequence = (), max_connections: int = 200):
        self.folder = _new_folder(PG_PREFIX)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.addresses = ["127.0.0.1", *(ns.host_address for ns in reachable_from)]
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        atexit.register(self.close)
        self._run(
            pg_bin("initdb"),
            *("-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"),
            *("-E", "UTF8", "--locale=C.UTF-8"),
        )
        settings = {
            "port": self.port,
            "listen_addresses": f"'{','.join(self.addresses)}'",
            "unix_socket_directories": f"'{self.folder}'",
            "max_connections": max_connections,
            # A throw-away server: durability costs time and buys nothing here.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_wal_size": "256MB",
            "log_line_prefix": "'%m [%p] %h '",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {ns.network} trust\n" for ns in reachable_from)
        self.start()

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, cwd=self.folder
        )
        if result.returncode:
            raise RuntimeError(
                f"{' '.join(command[:2])} failed ({result.returncode}): {result.stderr or result.stdout}"
                f"\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        self._run(pg_bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log))

    def stop(self, mode: str = "fast") -> None:
        """Stop it: `smart` waits for clients to leave, `fast` ends their sessions, `immediate`
        quits without a clean shutdown (crash recovery at the next start)."""
        self._run(pg_bin("pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def restart(self, mode: str = "fast") -> None:
        """Stop (see stop) and start again; returns once it accepts connections."""
        self.stop(mode)
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        pids = _server_pids(self.folder)
        return pids[0] if pids and process_runs(pids[0]) else None

    def url(self, dbname: str = "postgres", *, via=None) -> str:
        """A URL for `dbname`; `via` a network namespace: as its processes reach the server."""
        host = via.host_address if via else "127.0.0.1"
        return f"postgres://postgres@{host}:{self.port}/{dbname}"

    def accepts_connections(self, timeout: float = 2) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=max(1, round(timeout)), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def create_database(self, name: str) -> str:
        """(Re-)create database `name`; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server at once, whatever state it is in, and remove its folder."""
        atexit.unregister(self.close)
        if not self.folder.exists():
            return
        pid = self.pid
        if pid:
            _kill_if_ours(pid, self.data, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
            deadline = time.monotonic() + 10
            while process_runs(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _kill_if_ours(pid, self.data, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RedisServer:
    """`redis-server` on a free port, nothing saved (a restart loses every key, as a broker restart
    without persistence does). Listens on 127.0.0.1 and the host side of `reachable_from`."""

    def __init__(self, *, reachable_from: Sequence = ()):
        self.folder = _new_folder(REDIS_PREFIX)
        self.port = free_port()
        self.addresses = ["127.0.0.1", *(ns.host_address for ns in reachable_from)]
        self.process: subprocess.Popen | None = None
        atexit.register(self.close)
        self.start()

    def start(self, timeout: float = 30) -> None:
        """Start the server and return once it answers."""
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", " ".join(self.addresses)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
                *("--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid")),
                *("--daemonize", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.accepts_connections():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, db: int = 0, *, via=None) -> str:
        host = via.host_address if via else "127.0.0.1"
        return f"redis://{host}:{self.port}/{db}"

    def accepts_connections(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "server.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def database_settings(url: str) -> dict:
    """The DATABASES entry the project's settings make of DATABASE_URL=`url` (with every option
    they add), read by running the settings module again with that URL."""
    import runpy

    from tests.cluster import ROOT

    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        return runpy.run_path(str(ROOT / "eventproject" / "settings" / "web.py"))["DATABASES"]["default"]
    finally:
        if saved is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = saved


@contextlib.contextmanager
def django_database(url: str, *, migrate: bool = True):
    """Point Django's default connection at `url` for the block (migrated first), whatever database
    the process was set up with, then put the original back. Clusters started meanwhile by
    tests/cluster.py get this URL too (they read it from the connection)."""
    from django.core.management import call_command
    from django.db import connections
    from django.db.utils import load_backend

    original, original_settings = connections["default"], connections.settings["default"]
    original.close()
    entry = connections.configure_settings({"default": database_settings(url)})["default"]
    connections.settings["default"] = entry
    connections["default"] = load_backend(entry["ENGINE"]).DatabaseWrapper(entry, "default")
    try:
        if migrate:
            call_command("migrate", verbosity=0)
        yield
    finally:
        connections["default"].close()
        connections.settings["default"] = original_settings
        connections["default"] = original
