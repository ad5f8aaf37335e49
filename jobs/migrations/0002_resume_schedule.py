"""Install the every-minute schedule that heals stalled jobs (resume_jobs) without anyone."""

from django.db import migrations

NAME = "resume stalled jobs"


def install(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={"func": "jobs.tasks.resume_stalled_jobs", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def uninstall(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
