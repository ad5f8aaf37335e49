"""One POST to a receiver, made safely: the server must not be a way into the networks behind it,
nor be held by a receiver that hangs.

- The host is resolved once; every address it resolves to must be public (private, loopback,
  link-local, multicast and reserved ones are refused unless WEBHOOKS_ALLOW_PRIVATE_ADDRESSES),
  and the connection goes to an address that was checked, never to a second resolution (a DNS
  answer that changes between the check and the connection cannot smuggle in another address).
- One deadline covers everything (resolution, connection, TLS, sending, the answer's head and an
  excerpt of its body): a watchdog shuts the socket when it passes, so a receiver dripping a byte
  at a time cannot stretch it.
- Redirects are not followed (a 3xx is a failed attempt that says so); at most EXCERPT_BYTES of
  the answer's body are read.
- A URL is sent as an IRI becomes a URI (RFC 3987): an internationalised host name in its IDNA
  (xn--) form, the path and query percent-encoded as UTF-8.
- The URL is never part of an error message (its query may carry a token), and whatever goes
  wrong ends as a failed attempt, never as an exception (a delivery would be claimed again and
  again, its attempts never logged).
"""

import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import idna
from django.conf import settings
from django.utils.encoding import iri_to_uri
from django.utils.translation import gettext as _

EXCERPT_BYTES = 1024  # read from the answer's body at most
EXCERPT_CHARS = 256  # kept of it
USER_AGENT = "eventproject-webhooks/1"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What one attempt learned: the receiver's status code (None when there was no answer), an
    error when the attempt failed, the start of the answer's body, and how long it all took."""

    status_code: int | None
    error: str
    excerpt: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return not self.error


class _Failed(Exception):
    """The attempt failed before an answer came; the message says why, without the URL."""


def address_refusal(address: str) -> str | None:
    """Why a receiver at this IP address is refused (None: allowed)."""
    if settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES:
        return None
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    for test, kind in (
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_private, "a private"),
        (ip.is_multicast, "a multicast"),
        (ip.is_unspecified or ip.is_reserved or not ip.is_global, "a non-public"),
    ):
        if test:
            return (
                f"{ip} is {kind} address; receivers must be public "
                f"(WEBHOOKS_ALLOW_PRIVATE_ADDRESSES allows others)"
            )
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with a receiver's URL, in words for the person typing it (None: nothing).
    Addresses behind a host name are checked at each attempt, when they are resolved."""
    if any(char.isspace() or not char.isprintable() for char in url):
        return _("No spaces or control characters in the URL: percent-encode them (%20 for a space).")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return _("Not a valid URL.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _("Give an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        return _("No user name or password in the URL: receivers check the signature instead.")
    try:
        _ascii_host(parts.hostname)
    except _Failed:
        return _("The host name is not a valid domain name (IDNA).")
    try:
        refusal = address_refusal(parts.hostname)
    except ValueError:  # a host name, not an address
        return None
    return _("Refused: %(reason)s.") % {"reason": refusal} if refusal else None


@dataclass(frozen=True)
class _Target:
    """Where a URL's request goes, in the ASCII forms DNS, TLS and HTTP take."""

    host: str  # an internationalised name in its IDNA (xn--) form
    port: int
    secure: bool
    path: str  # with the query; non-ASCII percent-encoded as UTF-8, existing escapes kept

    @classmethod
    def of(cls, url: str) -> "_Target":
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:  # url_problem refuses such URLs when they are saved
            raise _Failed("the URL is not valid (its port or address)") from None
        if not parts.hostname:
            raise _Failed("the URL has no host")
        secure = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(_ascii_host(parts.hostname), port or (443 if secure else 80), secure, iri_to_uri(path))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.secure else 80) else f"{host}:{self.port}"


def _ascii_host(host: str) -> str:
    """The host as DNS, TLS and HTTP take it: a non-ASCII name in its IDNA 2008 form, as browsers
    send it (Python's own codec follows IDNA 2003, which sends faß.de to fass.de, another domain).
    ASCII names and addresses go as they are, checked for empty or overlong labels."""
    try:
        if host.isascii():
            return host.encode("idna").decode("ascii")
        return idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError:  # idna.IDNAError is one
        raise _Failed("the receiver's host name is not a valid domain name (IDNA)") from None


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST `body` to `url` with `headers`, within `timeout` seconds in all."""
    started = time.monotonic()
    deadline = started + timeout
    status, excerpt = None, ""
    try:
        target = _Target.of(url)
        watchdog = _Watchdog(_connect(target.host, target.port, deadline, timeout), deadline)
        try:
            if target.secure:
                watchdog.sock = ssl.create_default_context().wrap_socket(
                    watchdog.sock, server_hostname=target.host
                )
            status, excerpt = _exchange(watchdog.sock, target, body, headers)
        finally:
            watchdog.stop()
    except _Failed as exc:
        error = str(exc)
    except ssl.SSLError as exc:
        error = f"TLS error: {exc.reason or exc}"
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline - 0.01 or isinstance(exc, TimeoutError):
            error = f"no answer within {timeout:g} s (WEBHOOKS_TIMEOUT_SECONDS)"
        else:
            error = _os_error(exc)
    except Exception as exc:  # a bug: still a failed attempt, logged, retried after a backoff
        error = _unexpected(exc)
    else:
        error = _status_error(status)
    return Answer(status, error, excerpt, time.monotonic() - started)


def _connect(host: str, port: int, deadline: float, timeout: float) -> socket.socket:
    """A connected socket to a checked address of `host`."""
    addresses = _resolve(host, port, deadline - time.monotonic())
    for address in addresses:
        if refusal := address_refusal(address):
            raise _Failed(f"refused: {refusal}")
    last = None
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            return socket.create_connection((address, port), timeout=left)
        except TimeoutError:
            raise _Failed(f"no answer within {timeout:g} s (WEBHOOKS_TIMEOUT_SECONDS)") from None
        except OSError as exc:
            last = exc
    raise _Failed(_os_error(last) if last else f"no answer within {timeout:g} s (WEBHOOKS_TIMEOUT_SECONDS)")


def _resolve(host: str, port: int, seconds: float) -> list[str]:
    """The addresses `host` resolves to, in order, resolved once; getaddrinfo has no timeout of its
    own, so it runs on a thread that is left behind if it outlasts the deadline."""
    found: dict[str, Any] = {}

    def resolve() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:
            found["error"] = exc

    thread = threading.Thread(target=resolve, name="webhook-resolve", daemon=True)
    thread.start()
    thread.join(max(seconds, 0))
    if thread.is_alive():
        raise _Failed("the receiver's host name did not resolve in time")
    if "error" in found:
        raise _Failed(f"cannot resolve the receiver's host name ({_os_error(found['error'])})")
    return list(dict.fromkeys(info[4][0] for info in found["infos"]))


def _exchange(sock, target: _Target, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """Send the request on the connected socket; the status and the start of the answer's body."""
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.sock = sock  # already connected to the checked address: never resolved again
    connection.request(
        "POST",
        target.path,
        body=body,
        headers={
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **headers,
        },
    )
    response = connection.getresponse()
    while 100 <= response.status < 200 and response.status != 101:
        response = _next_answer(sock, response)
    try:
        start = response.read1(EXCERPT_BYTES)  # one read at most: no waiting for the rest
    except (OSError, http.client.HTTPException):
        start = b""  # the status came: the body's start is only a courtesy
    return response.status, _printable(start)


def _next_answer(sock, interim: http.client.HTTPResponse) -> http.client.HTTPResponse:
    """The answer after an informational one (103 Early Hints, say), which RFC 9110 has a client
    read past; http.client itself skips only 100. It continues from the same buffered reader."""
    answer = http.client.HTTPResponse(sock, method="POST")
    answer.fp.close()
    answer.fp = interim.fp
    interim.fp = None  # type: ignore[assignment]  # as http.client detaches it: collected, it would close it
    answer.begin()
    return answer


def _printable(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    text = "".join(char if char.isprintable() or char in "\n\t" else "\ufffd" for char in text)
    return text[:EXCERPT_CHARS]


class _Watchdog:
    """Shuts the socket when the deadline passes, so that a blocked read or write returns at once
    (a socket timeout alone restarts at every byte a slow receiver sends)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock  # replaced by its TLS wrapper, which takes over the connection
        self.timer = threading.Timer(max(deadline - time.monotonic(), 0), self._cut)
        self.timer.daemon = True
        self.timer.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.timer.cancel()
        self.sock.close()


def _status_error(status: int) -> str:
    if 200 <= status < 300:
        return ""
    if 300 <= status < 400:
        return f"the receiver answered HTTP {status}: redirects are not followed"
    return f"the receiver answered HTTP {status}"


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | http.client.RemoteDisconnected):
        return "the receiver closed the connection without an answer"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or "unknown host"
    return getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"


def _unexpected(exc: Exception) -> str:
    """The error of an attempt that failed in a way nobody foresaw, and a log line with where it
    happened: the stack without its message, which might quote the URL."""
    logger.error(
        "a webhook attempt failed with an unexpected %s:\n%s",
        type(exc).__name__,
        "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__))),
    )
    return f"unexpected {type(exc).__name__} (the log says where)"
