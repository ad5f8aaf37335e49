"""The three groups people are put in: operators run jobs, analysts read results, viewers watch jobs.

The API and the admin check the same model permissions, so a group means the same in both.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = {
    # start, cancel, resume and retry jobs, and watch them (with their items and errors)
    "operators": ["jobs.add_job", "jobs.change_job", "jobs.view_job"],
    # read and export results: profiles, behaviours, events, extraction states
    "analysts": [
        "extraction.view_userprofile",
        "extraction.view_behavior",
        "extraction.view_extractedevent",
        "extraction.view_extractionstate",
    ],
    # jobs and their progress only
    "viewers": ["jobs.view_job"],
}


def install(apps, schema_editor):
    # Permissions are normally created after all migrations ran; a fresh database has none yet.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        wanted = [perm.split(".") for perm in perms]
        group.permissions.set(
            [
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
                for app_label, codename in wanted
            ]
        )


def uninstall(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_drains_and_fail_fast_kind"),
        ("extraction", "0003_extractor_version_255"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
