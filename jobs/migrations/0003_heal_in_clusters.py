"""Every cluster now heals jobs by itself (at start and every JOBS_HEAL_SECONDS): the every-minute
schedule that 0002 installed is removed."""

from django.db import migrations

NAME = "resume stalled jobs"


def uninstall(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


def reinstall(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=NAME,
        defaults={"func": "jobs.tasks.resume_stalled_jobs", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_resume_schedule")]

    operations = [migrations.RunPython(uninstall, reinstall)]
