"""What the apps' management commands share."""

from django.core.management.base import CommandError


def option_within(option: str, value: int, low: int, high: int) -> None:
    """CommandError naming the option unless `value` is from `low` to `high`."""
    if not low <= value <= high:
        raise CommandError(f"{option} must be from {low:,} to {high:,}, got {value}")
