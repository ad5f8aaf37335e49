"""Counters the metrics need that no other table can tell (lease losses, retries, LLM calls).

Everything else /metrics reports is read from the job tables themselves. A counter is the sum of
its shards: each process adds to its own shard (pid modulo SHARDS), so workers committing chunks
at once do not queue on a single row.
"""

from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=64)
    label = models.CharField(max_length=32, blank=True, help_text="The one label value, or empty")
    shard = models.PositiveSmallIntegerField()
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # The upsert in ops.metrics.counters_add conflicts on exactly these columns.
            models.UniqueConstraint(fields=["name", "label", "shard"], name="counter_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name}{{{self.label}}}[{self.shard}] = {self.value}"
