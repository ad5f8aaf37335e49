from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class ExtractionConfig(AppConfig):
    name = "extraction"
    verbose_name = gettext_lazy("Extraction")
