from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class ExtractionConfig(AppConfig):
    name = "extraction"
    verbose_name = gettext_lazy("Extraction")

    def ready(self) -> None:
        from .webhook_events import event_types_register

        event_types_register()
