"""Settings' values read from environment variables, each checked: a bad value raises
ImproperlyConfigured naming the variable, at start-up instead of later in a worker. An unset or
empty variable gives the default."""

import ipaddress
import math
import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}")
    if not number >= minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_list(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


def env_rate(name: str, default: str) -> str:
    """A throttle rate such as 60/minute (DRF's format)."""
    rate = os.environ.get(name) or default
    if not re.fullmatch(r"\d+/(second|minute|hour|day|s|m|h|d)", rate):
        raise ImproperlyConfigured(f"{name} must look like 60/minute, got {rate!r}")
    return rate


def env_networks(name: str, default: str = "") -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated addresses or networks (CIDR ranges); an address is a network of one."""
    networks = []
    for network in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(network, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} entries must be addresses or networks like 10.0.0.0/8, got {network!r}"
            ) from None
    return networks


def env_file(name: str) -> str | None:
    """The path of a file that must exist, or None when the variable is unset."""
    path = os.environ.get(name) or None
    if path and not Path(path).is_file():
        raise ImproperlyConfigured(f"{name} {path!r} is not a file")
    return path
