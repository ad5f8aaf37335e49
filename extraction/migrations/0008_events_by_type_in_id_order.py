"""Events by type in id order, the order every page and export reads them in (see ExtractedEvent).

On PostgreSQL the new index is built CONCURRENTLY, and the old one dropped the same way, so commits
go on writing events while it builds (a plain CREATE INDEX would hold them off the whole time, on a
table of many millions of rows). That cannot run in a transaction, hence `atomic = False`; on
failure a half-built index is left INVALID: drop it (DROP INDEX event_type_id) and migrate again.
"""

from django.db import migrations, models

OLD = models.Index(fields=["event_type", "starts_at"], name="event_type_time")
NEW = models.Index(fields=["event_type", "id"], name="event_type_id")


def swap(dropped: models.Index, added: models.Index):
    def run(apps, schema_editor) -> None:
        model = apps.get_model("extraction", "ExtractedEvent")
        concurrently = {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
        schema_editor.add_index(model, added, **concurrently)
        schema_editor.remove_index(model, dropped, **concurrently)

    return run


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("extraction", "0007_events_checked_by_the_commit"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(swap(OLD, NEW), swap(NEW, OLD))],
            state_operations=[
                migrations.RemoveIndex(model_name="extractedevent", name="event_type_time"),
                migrations.AddIndex(model_name="extractedevent", index=NEW),
            ],
        ),
    ]
