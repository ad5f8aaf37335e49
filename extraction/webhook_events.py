"""What imports announce to webhooks: one call, `import_event_record`, in the transaction of each
import state change that ends an import (extraction.imports)."""

from django.utils.translation import gettext_lazy

from webhooks.event_types import event_type_register
from webhooks.services import event_record

from .models import DataImport

IMPORT_COMPLETED = "import.completed"
IMPORT_FAILED = "import.failed"


def event_types_register() -> None:
    """Called when the app is ready (extraction.apps)."""
    event_type_register(IMPORT_COMPLETED, gettext_lazy("an import completed (with its counts)"))
    event_type_register(IMPORT_FAILED, gettext_lazy("an import failed (with its error)"))


def import_event_record(import_id: int, event_type: str) -> None:
    """Record that the import reached the state `event_type` names; call it in the transaction
    that made the change, after the change."""
    data_import = DataImport.objects.get(id=import_id)
    data = {
        "import": {
            "id": data_import.id,
            "kind": data_import.kind,
            "status": data_import.status,
            "file_name": data_import.file_name,
            "created_at": _iso(data_import.created_at),
            "started_at": _iso(data_import.started_at),
            "finished_at": _iso(data_import.finished_at),
            "error": data_import.error,
            "rows_read": data_import.rows_read,
            "imported": data_import.imported,
            "updated": data_import.updated,
            "duplicates": data_import.duplicates,
            "rejected": data_import.rejected,
        }
    }
    event_record(type=event_type, data=data)


def _iso(value) -> str | None:
    return value.isoformat() if value else None
