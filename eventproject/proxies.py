"""Who the client is, and whether it came over HTTPS, behind the proxies and load balancers named
in TRUSTED_PROXIES: only theirs is believed of what X-Forwarded-For and X-Forwarded-Proto say.

django-axes counts login failures per client address (AXES_CLIENT_IP_CALLABLE names
client_address). Behind a load balancer every request arrives from the balancer's address, so
without this every client would share one count and anyone could lock `admin` out for everyone.
"""

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def forwarded_proto_from_proxies_only(get_response: Callable[[HttpRequest], HttpResponse]):
    """Middleware, before SecurityMiddleware: X-Forwarded-Proto is dropped unless a trusted proxy
    sent it. Django believes it (SECURE_PROXY_SSL_HEADER, HTTPS=on) from anyone; a client that
    reaches the web server's own address directly (WEB_BIND, for a load balancer's health check)
    could otherwise pass for HTTPS and use the admin over plain HTTP."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if "HTTP_X_FORWARDED_PROTO" in request.META and not _trusted(request.META.get("REMOTE_ADDR", "")):
            del request.META["HTTP_X_FORWARDED_PROTO"]
        return get_response(request)

    return middleware


def client_address(request: HttpRequest) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
    address in X-Forwarded-For (read from the right, as each proxy appends the address it saw) that
    is not itself a trusted proxy. A header sent by any other client is ignored, and so are the
    entries to the left of the first untrusted one (its sender may have written them)."""
    peer = request.META.get("REMOTE_ADDR", "")
    if not _trusted(peer):
        return peer
    address = peer
    for entry in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        entry = entry.strip()
        if not _parse(entry):
            break  # garbage: nothing to its left can be believed either
        address = entry
        if not _trusted(entry):
            break
    return address


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(text: str) -> bool:
    address = _parse(text)
    return address is not None and any(address in network for network in settings.TRUSTED_PROXIES)
