"""The statuses rows of several apps are in, and the words they are shown in."""

import enum

from django.db import models
from django.utils.translation import gettext_lazy
from django_stubs_ext import StrOrPromise

# Every status a row can be in, by its value: one word each, translated once, whichever model's
# status it is (a job's, an item's, an import's, a delivery's…).
STATUS_WORDS: dict[str, StrOrPromise] = {
    "queued": gettext_lazy("queued"),
    "pending": gettext_lazy("pending"),
    "running": gettext_lazy("running"),
    "sending": gettext_lazy("sending"),
    "cancelling": gettext_lazy("cancelling"),
    "cancelled": gettext_lazy("cancelled"),
    "completed": gettext_lazy("completed"),
    "succeeded": gettext_lazy("succeeded"),
    "failed": gettext_lazy("failed"),
}


class StatusChoices(models.TextChoices):
    """A model's statuses: each member's value is a status of STATUS_WORDS, and its label that
    status's word, so that a status reads (and translates) alike on every model."""

    @enum.property
    def label(self) -> StrOrPromise:
        return STATUS_WORDS[self.value]
