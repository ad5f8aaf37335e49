"""The answer cache's keys and pruning: a request answered (and validated) once is answered from
the table (LLMCacheEntry) the next time the same request is asked, by any worker."""

import hashlib
import json
from datetime import datetime

from .models import LLMCacheEntry


def request_key(
    model: str,
    temperature: float | None,
    messages: list[dict],
    response_format: str,
    schema: dict | None = None,
) -> str:
    """The cache's key for a request as sent: the temperature it carried (None: none), the format
    it asked for and the schema with it. A JSON-object request hashes as every request did before
    formats could differ, so answers cached then are still found."""
    mode: bool | str = True if response_format == "json_object" else response_format
    parts = [model, temperature, mode, messages] + ([schema] if response_format == "json_schema" else [])
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_prune(before: datetime, *, batch_size: int = 10_000) -> int:
    """Delete the cached answers made before `before`, in batches so that no long transaction holds
    the table (workers keep reading and adding); return how many went."""
    deleted = 0
    stale = LLMCacheEntry.objects.filter(created_at__lt=before)
    while ids := list(stale.values_list("id", flat=True)[:batch_size]):
        deleted += LLMCacheEntry.objects.filter(id__in=ids).delete()[0]
    return deleted
