"""The table of the "cluster_stats" cache (settings.CACHES), where clusters on the database broker
leave their heartbeats for /healthz. A migration, so that `migrate` alone prepares a database."""

from django.core.management import call_command
from django.db import migrations

TABLE = "ops_cluster_stats"


def create(apps, schema_editor):
    call_command("createcachetable", TABLE, database=schema_editor.connection.alias, verbosity=0)


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("ops", "0001_counters")]

    operations = [migrations.RunPython(create, drop)]
