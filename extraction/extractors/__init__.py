"""The extractor registry: names from settings.EXTRACTION_EXTRACTORS mapped to classes."""

from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from .base import (
    BehaviorRecord,
    Control,
    EventDraft,
    ExtractionError,
    Extractor,
    ExtractorFatalError,
    UserInput,
    UserResult,
)

__all__ = [
    "BehaviorRecord",
    "Control",
    "EventDraft",
    "ExtractionError",
    "Extractor",
    "ExtractorFatalError",
    "UnknownExtractor",
    "UserInput",
    "UserResult",
    "extractor_class",
    "extractor_names",
    "extractors_load",
    "make_extractor",
]


class UnknownExtractor(LookupError):
    pass


def extractor_names() -> list[str]:
    return sorted(settings.EXTRACTION_EXTRACTORS)


@cache
def _load(path: str) -> type[Extractor]:
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"cannot import extractor {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Extractor)):
        raise ImproperlyConfigured(f"{path!r} is not an Extractor subclass")
    return cls


def extractor_class(name: str) -> type[Extractor]:
    try:
        path = settings.EXTRACTION_EXTRACTORS[name]
    except KeyError:
        raise UnknownExtractor(
            _("unknown extractor %(name)r (available: %(names)s)")
            % {"name": name, "names": ", ".join(extractor_names())}
        ) from None
    return _load(path)


def extractors_load() -> None:
    """Import every configured extractor now. The cluster does it before its workers fork, so they
    share the modules instead of each importing them at its first chunk (the LLM extractor with the
    openai client: 0.36 s, measured), and a class path that is wrong stops it at its start."""
    for name in extractor_names():
        extractor_class(name)


def make_extractor(name: str, options: dict[str, Any] | None = None) -> Extractor:
    """An extractor instance; raises UnknownExtractor or ValidationError (bad options)."""
    return extractor_class(name)(options)
