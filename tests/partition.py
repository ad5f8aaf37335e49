"""A network namespace for one process (say one `qcluster`), joined to this machine through a
router namespace, so that a test can cut that process off silently (every packet dropped both
ways, no reset) and heal it again.

    with NetworkNamespace() as ns:
        server = PostgresServer(reachable_from=[ns])        # also listens on ns.host_address
        process = subprocess.Popen(ns.command([sys.executable, "manage.py", "qcluster"]), env={
            "DATABASE_URL": server.url("db", via=ns), ...})
        ns.cut(); ...; ns.heal()

    this machine (ns.host_address) ──veth── router namespace ──veth── namespace (ns.address)

Inside, the process sees only its end of the link (ns.address) and its own loopback: it reaches
servers on this machine at ns.host_address, so they must listen there too. Addresses come from a
/29 of 10.213.0.0/16 that no interface of this machine uses (ns.network): a /30 on each side of
the router.

The cut is a token-bucket qdisc that lets nothing through (`tbf rate 1kbit burst 1 limit 1`) on
the router's two links: `tc ... netem` and tc filters need kernel modules this machine lacks, and
there is no iptables or nft. The packets are dropped in between, as a partition in the network
does, not at either end: a qdisc dropping at a sender's own link tells its TCP at once (a local
congestion drop), which then gives up on the connection in seconds; here both ends send and hear
nothing, so an established connection sees only its own timeouts (keepalives, tcp_user_timeout).
Needs root.

Names carry the PID of the process that made them; a namespace or link whose maker is gone (a run
killed with SIGKILL) is removed, with whatever still runs inside, by the next one made.
"""

import atexit
import contextlib
import ipaddress
import os
import random
import re
import signal
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from itertools import count
from urllib.parse import urlsplit, urlunsplit

NAME = re.compile(r"^evp(\d+)[nrh](\d+)$")  # evp<maker's pid>n<index> (namespace), …r… (router), …h… (link)
NETWORK = ipaddress.ip_network("10.213.0.0/16")
CUT = ["tbf", "rate", "1kbit", "burst", "1", "limit", "1"]
_made = count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces_available() -> str:
    """'' if network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        result = subprocess.run(["tc", "-V"], capture_output=True, timeout=10)
        _ip("netns", "list")
    except (OSError, RuntimeError) as exc:
        return f"ip and tc (iproute2) are needed: {exc}"
    return "" if result.returncode == 0 else "tc (iproute2) does not run"


def _maker_gone(name: str) -> bool:
    match = NAME.match(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale() -> None:
    """Remove namespaces (and what runs in them) and links left by processes that are gone."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if _maker_gone(name):
            _remove(name)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if _maker_gone(link):
            _ip("link", "del", link, check=False)


def _remove(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)


def _used_networks() -> list:
    used = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        if match := re.search(r"inet (\S+)", line):
            used.append(ipaddress.ip_interface(match.group(1)).network)
    return used


class NetworkNamespace:
    """A namespace joined to this machine through a router namespace; see the module's docstring."""

    def __init__(self):
        remove_stale()
        index = next(_made)
        self.name, self.router = f"evp{os.getpid()}n{index}", f"evp{os.getpid()}r{index}"
        self.host_link, self.link = f"evp{os.getpid()}h{index}", "eth0"
        self.is_cut = False
        atexit.register(self.close)
        _ip("netns", "add", self.name)
        _ip("netns", "add", self.router)
        try:
            veth = ("type", "veth", "peer", "name")
            _ip("link", "add", self.host_link, *veth, "hostside", "netns", self.router)
            _ip("-n", self.router, "link", "add", "nsside", *veth, self.link, "netns", self.name)
            self._address()
            _ip("link", "set", self.host_link, "up")
            for namespace, link in (
                (self.router, "hostside"),
                (self.router, "nsside"),
                (self.name, self.link),
                (self.name, "lo"),
            ):
                _ip("-n", namespace, "link", "set", link, "up")
            _ip("-n", self.name, "route", "add", "default", "via", self.router_inside)
            _ip("route", "add", self.inside_network, "via", self.router_outside, "dev", self.host_link)
            subprocess.run(
                ["ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                check=True,
                capture_output=True,
                timeout=30,
            )
        except BaseException:
            self.close()
            raise

    def _address(self) -> None:
        """A /29 of NETWORK that no interface here is in: its first /30 between this machine (.1)
        and the router (.2), its second between the router (.5) and the namespace (.6)."""
        used = _used_networks()
        subnets = list(NETWORK.subnets(new_prefix=29))
        for network in random.sample(subnets, 50):
            if any(network.overlaps(other) for other in used):
                continue
            outside, inside = network.subnets(new_prefix=30)
            host, router_outside = outside.hosts()
            router_inside, address = inside.hosts()
            if _ip("addr", "add", f"{host}/30", "dev", self.host_link, check=False).returncode:
                continue  # taken meanwhile
            _ip("-n", self.router, "addr", "add", f"{router_outside}/30", "dev", "hostside")
            _ip("-n", self.router, "addr", "add", f"{router_inside}/30", "dev", "nsside")
            _ip("-n", self.name, "addr", "add", f"{address}/30", "dev", self.link)
            self.network, self.inside_network = str(network), str(inside)
            self.host_address, self.address = str(host), str(address)
            self.router_outside, self.router_inside = str(router_outside), str(router_inside)
            return
        raise RuntimeError(f"no free /29 in {NETWORK}")

    def reach(self, url: str) -> str:
        """`url` as seen from inside: a loopback host becomes this machine's end of the link (the
        server must listen there too: `reachable_from`, or `listen_also` for an HTTP server)."""
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            return url
        netloc = parts.netloc.rsplit("@", 1)
        netloc[-1] = netloc[-1].replace(parts.hostname, self.host_address, 1)
        return urlunsplit(parts._replace(netloc="@".join(netloc)))

    def listen_also(self, httpd: ThreadingHTTPServer) -> ThreadingHTTPServer:
        """Serve what `httpd` (a loopback HTTP server of this process) serves on this machine's
        end of the link too, on the same port; returns the second server (shut it down after)."""
        port = httpd.server_address[1]
        also = type(httpd)((self.host_address, port), httpd.RequestHandlerClass)
        # What the handlers read besides the server's own state (the fake LLM server's `fake`).
        also.__dict__.update({k: v for k, v in httpd.__dict__.items() if k not in vars(also)})
        also.daemon_threads = True
        threading.Thread(target=also.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return also

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the PID is the program's)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Drop every packet both ways from now on, silently, in the router."""
        for link in ("hostside", "nsside"):
            subprocess.run(["tc", "-n", self.router, "qdisc", "add", "dev", link, "root", *CUT], check=True)
        self.is_cut = True

    def heal(self) -> None:
        """Let packets through again (connections that have not timed out go on)."""
        for link in ("hostside", "nsside"):
            subprocess.run(
                ["tc", "-n", self.router, "qdisc", "del", "dev", link, "root"], capture_output=True
            )
        self.is_cut = False

    def close(self) -> None:
        """Kill whatever runs inside and remove the namespace and its link."""
        atexit.unregister(self.close)
        _remove(self.name)
        _remove(self.router)
        _ip("link", "del", self.host_link, check=False)
        deadline = time.monotonic() + 5  # the kernel removes a namespace's links asynchronously
        while (
            time.monotonic() < deadline and _ip("link", "show", self.host_link, check=False).returncode == 0
        ):
            time.sleep(0.05)

    def __enter__(self) -> "NetworkNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
