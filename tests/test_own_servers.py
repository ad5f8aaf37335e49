"""The servers and the network a test can break without touching the machine's (tests/own_servers.py,
tests/partition.py): they start fast, stop and restart on demand, cut off silently, and leave
nothing behind, even when the process that made them was killed."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.cluster import ROOT, wait_for
from tests.own_servers import process_runs

pytestmark = pytest.mark.integration


def test_an_own_postgresql_server_stops_and_restarts_on_demand(postgres_server):
    assert postgres_server.accepts_connections()
    postgres_server.stop("immediate")
    assert not postgres_server.accepts_connections() and postgres_server.pid is None
    postgres_server.start()
    assert postgres_server.accepts_connections()
    before = postgres_server.pid
    started = time.monotonic()
    postgres_server.restart()
    assert postgres_server.accepts_connections() and postgres_server.pid != before
    assert time.monotonic() - started < 10


def test_a_closed_own_server_leaves_no_process_and_no_folder():
    from tests.own_servers import PostgresServer

    server = PostgresServer()
    pid, folder = server.pid, server.folder
    server.close()
    assert not process_runs(pid) and not folder.exists()


MAKER = """
import sys, time
from tests.own_servers import PostgresServer, RedisServer
from tests.partition import NetworkNamespace, namespaces_available
made = [PostgresServer(), RedisServer()]
if not namespaces_available():
    made.append(NetworkNamespace())
pg, redis, *namespace = made
print(pg.pid, pg.folder, redis.process.pid, redis.folder, *(ns.name for ns in namespace), flush=True)
time.sleep(600)
"""


def test_what_a_killed_process_left_behind_is_removed_by_the_next_server_made():
    from tests.own_servers import PostgresServer, RedisServer
    from tests.partition import NetworkNamespace, namespaces_available

    maker = subprocess.Popen(
        [sys.executable, "-c", MAKER], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    pg_pid, pg_folder, redis_pid, redis_folder, *namespace = maker.stdout.readline().split()
    maker.send_signal(signal.SIGKILL)  # no clean-up of its own
    maker.wait()
    assert process_runs(int(pg_pid)) and process_runs(int(redis_pid))

    with PostgresServer(), RedisServer():
        wait_for(
            lambda: not process_runs(int(pg_pid)) and not process_runs(int(redis_pid)),
            timeout=10,
            what="the killed process's servers to stop",
        )
        assert not Path(pg_folder).exists() and not Path(redis_folder).exists()
    if namespace and not namespaces_available():
        with NetworkNamespace():
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert namespace[0] not in listed


def test_a_test_database_on_an_own_server_is_migrated_and_serves_a_cluster(postgres_database, clusters):
    from extraction.services import profiles_upsert
    from jobs.models import Job
    from jobs.services import job_start

    profiles_upsert({f"own{i}": {} for i in range(20)})
    job = job_start(user_ids=[f"own{i}" for i in range(20)], extractor="noop", options={}, chunk_size=5)
    clusters()
    wait_for(
        lambda: Job.objects.get(id=job.id).status == Job.Status.COMPLETED, timeout=60, what="the job to end"
    )
    with psycopg.connect(postgres_database.url("eventproject")) as conn:
        assert conn.execute("SELECT succeeded_items FROM jobs_job WHERE id = %s", [job.id]).fetchone() == (
            20,
        )


def test_an_own_redis_server_loses_its_keys_when_restarted(redis_server):
    import redis

    client = redis.Redis(port=redis_server.port)
    client.set("bell", "rung")
    redis_server.restart()
    assert redis_server.accepts_connections() and client.get("bell") is None


ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
connection, _ = server.accept()
while data := connection.recv(100):
    connection.sendall(data)
"""


def test_a_cut_namespace_drops_packets_silently_until_healed(network_namespace):
    ns = network_namespace
    echo = subprocess.Popen(ns.command([sys.executable, "-c", ECHO, ns.address]), stdout=subprocess.PIPE)
    try:
        assert echo.stdout.readline() == b"listening\n"
        connection = socket.create_connection((ns.address, 7000), timeout=5)
        connection.sendall(b"before")
        assert connection.recv(100) == b"before"

        ns.cut()
        connection.settimeout(2)
        connection.sendall(b"during")
        with pytest.raises(TimeoutError):  # neither an answer nor a reset: silence
            connection.recv(100)
        with pytest.raises(TimeoutError):
            socket.create_connection((ns.address, 7000), timeout=1)

        ns.heal()
        connection.settimeout(30)  # the retransmission after the heal answers
        assert connection.recv(100) == b"during"
        connection.close()
    finally:
        echo.kill()
        echo.wait()


SEND = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", (sys.argv[1], 7001))
"""


def sent_packets(ns, inside: bool) -> int:
    """Packets that left this machine's end of the link (or, `inside`, the namespace's end)."""
    command = ns.command(["cat", f"/sys/class/net/{ns.link}/statistics/tx_packets"]) if inside else None
    if command:
        return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return int(Path(f"/sys/class/net/{ns.host_link}/statistics/tx_packets").read_text())


def test_a_cut_drops_packets_in_between_not_as_they_leave_either_end(network_namespace):
    """A qdisc dropping at a sender's own link tells its TCP at once (a local drop), which then
    ended a connection in about 8 s by itself; in a partition both ends send, and hear nothing."""
    ns = network_namespace
    ns.cut()
    before = sent_packets(ns, inside=False), sent_packets(ns, inside=True)
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", (ns.address, 7001))
    subprocess.run(ns.command([sys.executable, "-c", SEND, ns.host_address]), check=True, timeout=30)
    after = sent_packets(ns, inside=False), sent_packets(ns, inside=True)
    assert after[0] > before[0] and after[1] > before[1]


def test_a_process_in_a_namespace_reaches_servers_made_reachable_from_it(network_namespace):
    from tests.own_servers import PostgresServer

    ns = network_namespace
    with PostgresServer(reachable_from=[ns]) as server:
        probe = subprocess.run(
            ns.command(
                [
                    sys.executable,
                    "-c",
                    "import psycopg, sys; print(psycopg.connect(sys.argv[1]).execute("
                    "'SELECT inet_client_addr()').fetchone()[0])",
                    server.url(via=ns),
                ]
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.stdout.strip() == ns.address, probe.stderr


def test_a_cluster_in_a_namespace_works_through_its_link(network_namespace, postgres_database, clusters):
    from extraction.services import profiles_upsert
    from jobs.models import Job
    from jobs.services import job_start

    profiles_upsert({f"ns{i}": {} for i in range(20)})
    job = job_start(user_ids=[f"ns{i}" for i in range(20)], extractor="noop", options={}, chunk_size=5)
    cluster = clusters(namespace=network_namespace)
    wait_for(
        lambda: Job.objects.get(id=job.id).status == Job.Status.COMPLETED, timeout=60, what="the job to end"
    )

    def clients() -> set[str]:
        with psycopg.connect(postgres_database.url("eventproject")) as conn:
            rows = conn.execute(
                "SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE datname = 'eventproject'"
            ).fetchall()
        return {address for (address,) in rows} - {"127.0.0.1"}  # this process's connections

    assert wait_for(clients, timeout=30, what=f"the cluster's connections\n{cluster.output()}") == {
        network_namespace.address
    }


def test_an_http_server_of_the_test_answers_inside_a_namespace_too(network_namespace):
    from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

    with FakeOpenAIServer() as server:
        also = network_namespace.listen_also(server.httpd)
        try:
            post = (
                "import json, sys, urllib.request; print(urllib.request.urlopen(urllib.request.Request("
                "sys.argv[1] + '/chat/completions', json.dumps({'model': sys.argv[2], 'messages': "
                "[{'role': 'user', 'content': 'hi'}]}).encode(), {'Authorization': 'Bearer ' + sys.argv[3]}"
                "), timeout=10).status)"
            )
            url = network_namespace.reach(server.base_url)
            probe = subprocess.run(
                network_namespace.command([sys.executable, "-c", post, url, MODEL, API_KEY]),
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            also.shutdown()
            also.server_close()
    assert probe.stdout.strip() == "200", probe.stderr
    assert url.startswith(f"http://{network_namespace.host_address}:") and len(server.fake.requests) == 1
