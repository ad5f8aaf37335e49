"""Integrators configure webhook endpoints (URLs the server will call), follow deliveries and
redeliver them. Nobody else may point the server at a URL (superusers aside)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = {
    "integrators": [
        "webhooks.add_endpoint",
        "webhooks.change_endpoint",
        "webhooks.delete_endpoint",
        "webhooks.view_endpoint",
        "webhooks.view_delivery",
        "webhooks.change_delivery",  # redeliver
    ]
}


def install(apps, schema_editor):
    for app_config in apps.get_app_configs():  # permissions of new models are made after migrations
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(
            [
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
                for app_label, codename in (perm.split(".") for perm in perms)
            ]
        )


def uninstall(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
