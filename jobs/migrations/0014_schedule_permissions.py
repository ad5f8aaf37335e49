"""Operators manage schedules (they start jobs); viewers see them."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Group -> permissions added to it (the groups themselves come from migration 0005).
GRANTS = {
    "operators": ["jobs.add_schedule", "jobs.change_schedule", "jobs.delete_schedule", "jobs.view_schedule"],
    "viewers": ["jobs.view_schedule"],
}


def grant(apps, schema_editor):
    for app_config in apps.get_app_configs():  # permissions of new models are made after migrations
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GRANTS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def revoke(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GRANTS.items():
        group = apps.get_model("auth", "Group").objects.filter(name=name).first()
        if group:
            codenames = [perm.split(".")[1] for perm in perms]
            group.permissions.remove(
                *Permission.objects.filter(content_type__app_label="jobs", codename__in=codenames)
            )


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0013_schedules"),
        ("jobs", "0006_import_permissions"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
