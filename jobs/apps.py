from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = gettext_lazy("Jobs")

    def ready(self) -> None:
        from ops.metrics import figures_register

        from .metrics import jobs_figures
        from .webhook_events import event_types_register

        event_types_register()
        figures_register(jobs_figures)
