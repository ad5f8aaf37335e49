"""Model fields that several apps declare alike, spelled once so that they stay alike."""

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy
from django_stubs_ext import StrOrPromise


def link_field(
    to: Any,
    related_name: str,
    verbose_name: StrOrPromise,
    help_text: StrOrPromise = "",
    *,
    field: type[models.ForeignKey] = models.ForeignKey,
) -> models.ForeignKey:
    """A link that outlives what it points at: emptied when that row is deleted."""
    return field(
        to,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name=related_name,
        help_text=help_text,
        verbose_name=verbose_name,
    )


def unchecked_link(
    to: Any, on_delete: Any, related_name: str, verbose_name: StrOrPromise
) -> models.ForeignKey:
    """A foreign key the database neither checks nor indexes alone: where it is declared says why
    the check would cost too much or do harm, and which wider index serves its lookups."""
    return models.ForeignKey(
        to,
        on_delete=on_delete,
        related_name=related_name,
        db_constraint=False,
        db_index=False,
        verbose_name=verbose_name,
    )


def created_by_field() -> models.ForeignKey:
    """Who made the row; users get no reverse accessor for it."""
    return link_field(settings.AUTH_USER_MODEL, "+", gettext_lazy("created by"))


def created_at_field() -> models.DateTimeField:
    return models.DateTimeField(auto_now_add=True, verbose_name=gettext_lazy("created at"))


def count_field(verbose_name: StrOrPromise, *, big: bool = True) -> models.IntegerField:
    """A count that starts at zero (`big`: one that may pass two thousand million)."""
    field = models.PositiveBigIntegerField if big else models.PositiveIntegerField
    return field(default=0, verbose_name=verbose_name)


def moment_field(verbose_name: StrOrPromise, help_text: StrOrPromise = "") -> models.DateTimeField:
    """A time that may not have come yet (started, finished, next due…): empty until it does."""
    return models.DateTimeField(null=True, blank=True, help_text=help_text, verbose_name=verbose_name)


def status_field(choices: type[models.TextChoices], default: Any) -> models.CharField:
    """A row's status: one of `choices` (choices_constraint in the Meta holds the database to them)."""
    return models.CharField(
        max_length=16, choices=choices.choices, default=default, verbose_name=gettext_lazy("status")
    )


def choices_constraint(field: str, choices: type[models.Choices], name: str) -> models.CheckConstraint:
    """The database's own check that `field` holds one of its choices, whoever writes the row."""
    return models.CheckConstraint(condition=Q((f"{field}__in", choices.values)), name=name)
