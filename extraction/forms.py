"""The admin's upload form for imports: what `import_data` takes on its command line."""

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .importers import ImportFileError, detect_format
from .models import DataImport


class ImportUploadForm(forms.Form):
    kind = forms.ChoiceField(
        label=gettext_lazy("Data"),
        choices=[
            (DataImport.Kind.BEHAVIORS, gettext_lazy("Behaviours (a log: user, action, time…)")),
            (DataImport.Kind.PROFILES, gettext_lazy("Profiles (one row per user)")),
        ],
        initial=DataImport.Kind.BEHAVIORS,
        widget=forms.RadioSelect,
    )
    upload = forms.FileField(label=gettext_lazy("File"))
    file_format = forms.ChoiceField(
        label=gettext_lazy("Format"),
        choices=[("", gettext_lazy("from the file name")), ("csv", "CSV"), ("jsonl", "JSON Lines")],
        required=False,
    )
    encoding = forms.ChoiceField(
        label=gettext_lazy("Encoding"),
        choices=[("utf-8-sig", "UTF-8"), ("gb18030", "GB18030 (GBK)")],
        initial="utf-8-sig",
    )
    timezone = forms.CharField(
        label=gettext_lazy("Time zone"),
        max_length=64,
        initial=settings.TIME_ZONE,
        help_text=gettext_lazy("Of timestamps without an offset."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["upload"].help_text = _(
            "CSV or JSON Lines, optionally gzipped (.gz), at most %(megabytes)s MB (UPLOAD_MAX_BYTES). Bad "
            "rows are reported by line and skipped; importing a file again adds nothing."
        ) % {"megabytes": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}"}

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(_("Unknown time zone %(name)r.") % {"name": name}) from None
        return name

    def clean(self):
        data = super().clean()
        upload = data.get("upload")
        if upload is None:
            return data
        if upload.size > settings.UPLOAD_MAX_BYTES:
            self.add_error(
                "upload",
                _("The file is larger than %(megabytes)s MB.")
                % {"megabytes": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}"},
            )
        elif not data.get("file_format"):
            try:
                data["file_format"] = detect_format(Path(upload.name))
            except ImportFileError:
                self.add_error(
                    "file_format",
                    _("Cannot tell the format from the name %(name)r: choose CSV or JSON Lines.")
                    % {"name": upload.name},
                )
        return data
