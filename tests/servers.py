"""Real servers for integration tests: the production web server (gunicorn started with the command
line of deploy/eventproject-web.service, the deployment's install path replaced by this checkout,
DEBUG off, on the test database, answering on a free loopback port), and nginx and Prometheus in
front of it and beside it."""

import contextlib
import http.client
import json
import os
import random
import shlex
import signal
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable
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
    """A free loopback port below the kernel's range for ports it hands out itself (a server bound
    to port 0, a client's side of a connection): one of those could take a port of that range
    between this probe and the server's own bind, and a server that then failed to bind passed
    for started while that other one answered. Random, so that concurrent tests rarely pick the
    same one; still free when a server taken away starts again on it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for port in random.sample(range(20_000, max(ephemeral, 20_500)), 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def production_env(**env: str | None) -> dict[str, str]:
    """The environment of a production process on the test database (clusters need it too); a
    variable given as None is left out."""
    merged = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "DEBUG": "0",
        # This process's key: clusters sign their heartbeats, and this process the tasks it
        # enqueues, with it (clusters started by tests/cluster.py use it too).
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        **env,
    }
    return {name: value for name, value in merged.items() if value is not None}


class Started:
    """A server a test starts: waited for until it answers, stopped if it never does."""

    name = "the server"  # in messages
    process: subprocess.Popen

    def output(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _wait_until(self, answers: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05):
        """Wait until `answers()` (an OSError: not yet); a server that exits meanwhile fails at once,
        saying what it said. Whatever fails, it is stopped."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            try:
                return answers()
            except OSError:
                return False

        try:
            wait_for(up, timeout=timeout, what=f"{what}:\n{self.output()}", interval=interval)
        except BaseException:
            self.stop()
            raise

    def _terminate(self, timeout: float, kill: Callable[[], None]) -> None:
        """SIGTERM, then `kill()` if it has not ended after `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill()
                self.process.wait(timeout=10)


def exchange(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict | None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request on a new connection, closed after."""
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class WebServer(Started):
    """gunicorn as deploy/eventproject-web.service runs it; stop() is SIGTERM to the master only,
    as the unit's KillMode=mixed does, then SIGKILL of the group after a timeout."""

    name = "gunicorn"

    def __init__(self, log: Path, *, application: str = "eventproject.asgi", **env: str | None):
        self.port = free_port()
        self.log = log
        self.handle = log.open("ab")
        (command,) = unit("eventproject-web.service")["ExecStart"]
        command = shlex.split(command)
        assert command[-1] == "eventproject.asgi", command
        self.process = subprocess.Popen(
            [*command[:-1], application],
            cwd=ROOT,
            env=production_env(
                **{
                    "WEB_BIND": f"127.0.0.1:{self.port}",
                    "WEB_CONCURRENCY": "1",  # a test that needs more processes says so
                    "PROMETHEUS_MULTIPROC_DIR": str(log.parent / f"metrics-{self.port}"),
                    **env,
                }
            ),
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Its own word that it holds the port, then an answer: any other server on it answers too.
        listening = f"Listening at: http://127.0.0.1:{self.port} "
        self._wait_until(
            lambda: listening in self.output() and bool(self.get("/healthz")),
            timeout=30,
            what="gunicorn to listen and answer; it said",
        )

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) over a new connection."""
        return self.request("GET", path, headers=headers)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return exchange(connection, method, path, body, headers)

    def stop(self) -> None:
        self._terminate(45, kill=lambda: os.killpg(self.process.pid, signal.SIGKILL))
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a killed master
            os.killpg(self.process.pid, signal.SIGKILL)
        self.handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def session_cookie(user) -> str:
    """A Cookie header that logs `user` in on a live server (a session saved in the test database,
    signed with the key the servers share)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


class Nginx(Started):
    """The real nginx running deploy/nginx.conf in front of a web server: the deploy file with this
    test's ports, a certificate made for it, and the web server's address in place of the
    deployment's, inside a main configuration of its own (PID file, logs and buffers in `folder`).
    stop() is a fast shutdown (SIGTERM) of its master, by PID."""

    BINARY = os.environ.get("NGINX", "/usr/sbin/nginx")
    name = "nginx"

    def __init__(self, folder: Path, upstream_port: int):
        self.folder = folder
        self.http_port, self.https_port = free_port(), free_port()
        self.certificate = folder / "cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(folder / "key.pem"), "-out", str(self.certificate),
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        site = (
            (DEPLOY / "nginx.conf")
            .read_text()
            .replace("listen 80;", f"listen 127.0.0.1:{self.http_port};")
            .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{self.https_port} ssl http2;")
            .replace("/etc/ssl/eventproject/fullchain.pem", str(self.certificate))
            .replace("/etc/ssl/eventproject/privkey.pem", str(folder / "key.pem"))
            .replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
        )
        (folder / "site.conf").write_text(site)
        temp = {
            kind: folder / f"{kind}-temp" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        for path in temp.values():
            path.mkdir()
        (folder / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")  # its workers write the buffers here
            + f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\nevents {{}}\n"
            + "http {\n"
            + f"    access_log {folder / 'access.log'};\n"
            + "".join(f"    {kind}_temp_path {path};\n" for kind, path in temp.items())
            + f"    include {folder / 'site.conf'};\n}}\n"
        )
        self.process = subprocess.Popen(
            [self.BINARY, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(folder / "stderr.log").open("ab"),
        )
        self._wait_until(self._listening, timeout=15, what="nginx to listen")

    def _listening(self) -> bool:
        """nginx writes its PID file once its ports are bound (another server could answer there)."""
        if not (self.folder / "nginx.pid").exists():
            return False
        socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
        return True

    def https(self, timeout: float = 30) -> http.client.HTTPSConnection:
        """A connection to nginx's TLS port that trusts only the test's certificate."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        return http.client.HTTPSConnection("localhost", self.https_port, context=context, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) over HTTPS, a new connection."""
        return exchange(self.https(), method, path, body, headers)

    def output(self) -> str:
        """Its error logs."""
        return "".join(
            (self.folder / name).read_text(errors="replace")
            for name in ("stderr.log", "error.log")
            if (self.folder / name).exists()
        )

    def stop(self) -> None:
        self._terminate(20, kill=self.process.kill)


class Prometheus(Started):
    """The real Prometheus scraping a web server's /metrics directly over plain HTTP every
    `interval`, with its configuration and storage in `folder`, on a free port; stop() is SIGTERM
    to its PID."""

    BINARY = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
    name = "prometheus"

    def __init__(self, folder: Path, target_port: int, *, interval: str = "1s"):
        self.port = free_port()
        (folder / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
            "scrape_configs:\n  - job_name: eventproject\n    metrics_path: /metrics\n    scheme: http\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log = folder / "prometheus.log"
        self.process = subprocess.Popen(
            [
                self.BINARY,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        ready = lambda: self._get("/-/ready")[0] == 200  # noqa: E731
        self._wait_until(ready, timeout=30, what="Prometheus to be ready", interval=0.2)

    def _get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def query(self, expression: str) -> list[tuple[dict, float]]:
        """An instant query through Prometheus's HTTP API: (labels, value) per series."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return [(series["metric"], float(series["value"][1])) for series in answer["data"]["result"]]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self._terminate(30, kill=self.process.kill)
