"""The admin's start form: everything it accepts goes to services.job_start like the API's input.

Extractor options are typed fields built from each extractor's own schema (`options_spec`,
`option_limits`, `option_help`), so an operator picks a model or a temperature instead of writing
JSON; the extractor checks them again, as it does for the API.
"""

from typing import Any, cast

from django import forms
from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from extraction.extractors import extractor_class, extractor_names

from .errors import JobInvalid
from .models import Job
from .user_ids import too_many_ids, user_ids_read, user_ids_split

OPTION_SEPARATOR = "__"  # field name: <extractor>__<option>
# Labels of the options extractors share; others are shown as their name, spaced.
OPTION_LABELS = {
    "model": gettext_lazy("Model"),
    "temperature": gettext_lazy("Temperature"),
    "max_concurrency": gettext_lazy("Concurrency"),
    "token_budget": gettext_lazy("Prompt tokens per call"),
    "max_completion_tokens": gettext_lazy("Completion tokens per call"),
    "timeout": gettext_lazy("Timeout (s)"),
    "max_total_tokens": gettext_lazy("Token cap"),
    "allow_new_event_types": gettext_lazy("Allow new event types"),
    "response_format": gettext_lazy("Response format"),
}


def option_field(extractor: str, name: str, kind: type, default: Any, cls) -> forms.Field:
    """A form field for one option of an extractor, typed and bounded as the extractor checks it."""
    low, high = cls.option_limits.get(name, (None, None))
    help_text = cls.option_help.get(name, "")
    label = OPTION_LABELS.get(name) or name.replace("_", " ").capitalize()
    attrs = {"data-extractor": extractor}
    common = {"label": label, "required": False, "help_text": help_text}
    if kind is bool:
        return forms.BooleanField(initial=default, widget=forms.CheckboxInput(attrs), **common)
    if kind in (int, float):
        field, step = (forms.IntegerField, {}) if kind is int else (forms.FloatField, {"step": "any"})
        widget = forms.NumberInput({**attrs, **step})
        return field(initial=default, min_value=low, max_value=high, widget=widget, **common)
    if choices := cls.option_choices.get(name):
        labels = [(choice, choice or _("default (settings)")) for choice in choices]
        return forms.ChoiceField(choices=labels, initial=default, widget=forms.Select(attrs), **common)
    if kind is list:
        common["help_text"] = help_text or _("Separated by commas.")
        return forms.CharField(widget=forms.TextInput(attrs), **common)
    return forms.CharField(initial=default, widget=forms.TextInput(attrs), **common)


class JobStartForm(forms.Form):
    WHO = [
        ("needing", gettext_lazy("Everyone needing extraction (not in another active job)")),
        ("everyone", gettext_lazy("Every user, extracted before or not (not in another active job)")),
        ("list", gettext_lazy("These users (pasted below)")),
        ("file", gettext_lazy("Users in a file (one id per line)")),
    ]

    extractor = forms.ChoiceField(label=gettext_lazy("Extractor"), choices=[], initial="rules")
    who = forms.ChoiceField(
        label=gettext_lazy("Users"), choices=WHO, initial="needing", widget=forms.RadioSelect
    )
    user_ids = forms.CharField(
        label=gettext_lazy("User ids"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=gettext_lazy("Separated by new lines, spaces or commas."),
    )
    users_file = forms.FileField(label=gettext_lazy("File of user ids"), required=False)
    chunk_size = forms.IntegerField(
        label=gettext_lazy("Chunk size"),
        required=False,
        min_value=1,
        max_value=settings.JOBS_CHUNK_SIZE_LIMIT,
    )
    max_attempts = forms.IntegerField(
        label=gettext_lazy("Max attempts"),
        required=False,
        min_value=1,
        max_value=settings.JOBS_MAX_ATTEMPTS_LIMIT,
    )
    priority = forms.TypedChoiceField(
        label=gettext_lazy("Priority"),
        choices=Job.Priority.choices,
        coerce=int,
        empty_value=None,
        required=False,
        initial=Job.Priority.NORMAL,
        help_text=gettext_lazy(
            "Its share of the workers beside other running jobs: a high job gets twice the workers' time "
            "of a normal one."
        ),
    )
    max_workers = forms.IntegerField(
        label=gettext_lazy("Max workers"),
        required=False,
        min_value=1,
        max_value=settings.JOBS_MAX_WORKERS_LIMIT,
        help_text=gettext_lazy("The most workers it may hold at once; empty: no cap."),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        choices = [(name, name) for name in extractor_names()]
        cast(forms.ChoiceField, self.fields["extractor"]).choices = choices
        # Help texts naming settings are made here, in the language of the request.
        self.fields["users_file"].help_text = _(
            "UTF-8 text, one id per line; a 'user_id' header and # comments are skipped. At most "
            "%(megabytes)s MB and %(ids)s ids."
        ) % {
            "megabytes": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}",
            "ids": f"{settings.JOBS_MAX_USER_IDS:,}",
        }
        own = [(name, extractor_class(name).default_chunk_size) for name in extractor_names()]
        self.fields["chunk_size"].help_text = _(
            "Users a worker claims at a time. Default: the extractor's own (%(sizes)s), else %(size)s."
        ) % {
            "sizes": ", ".join(f"{name} {size}" for name, size in own if size),
            "size": settings.JOBS_CHUNK_SIZE,
        }
        self.fields["max_attempts"].help_text = _("Default %(attempts)s.") % {
            "attempts": settings.JOBS_MAX_ATTEMPTS
        }
        self.option_groups: dict[str, list[str]] = {}
        for extractor in extractor_names():
            cls = extractor_class(extractor)
            names = []
            for option, (kind, default) in cls.options_spec.items():
                field_name = f"{extractor}{OPTION_SEPARATOR}{option}"
                self.fields[field_name] = option_field(extractor, option, kind, default, cls)
                names.append(field_name)
            self.option_groups[extractor] = names

    def main_fields(self) -> list[forms.BoundField]:
        """The fields every job has (the options come in groups, one per extractor)."""
        return [self[name] for name in self.fields if OPTION_SEPARATOR not in name]

    def option_fieldsets(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [
            (extractor, [self[name] for name in names]) for extractor, names in self.option_groups.items()
        ]

    def options(self) -> dict[str, Any]:
        """The chosen extractor's options as typed: what was left empty takes the extractor's default."""
        data = self.cleaned_data
        extractor = data["extractor"]  # a required field
        cls = extractor_class(extractor)
        options: dict[str, Any] = {}
        for option, (kind, _default) in cls.options_spec.items():
            value = data.get(f"{extractor}{OPTION_SEPARATOR}{option}")
            if value is None or value == "":
                continue
            if kind is list:
                value = [part.strip() for part in value.split(",") if part.strip()]
            options[option] = value
        return options

    def clean(self):
        data = super().clean()
        who = data.get("who")
        if who == "list":
            ids = user_ids_split(data.get("user_ids", ""))
            if not ids:
                self.add_error("user_ids", _("Paste at least one user id."))
            elif len(ids) > settings.JOBS_MAX_USER_IDS:
                self.add_error("user_ids", too_many_ids(len(ids)))
            data["ids"] = ids
        elif who == "file":
            upload = data.get("users_file")
            if not upload:
                self.add_error("users_file", _("Choose a file."))
            elif upload.size > settings.UPLOAD_MAX_BYTES:
                self.add_error(
                    "users_file",
                    _("The file is larger than %(megabytes)s MB.")
                    % {"megabytes": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}"},
                )
            else:
                try:
                    data["ids"] = user_ids_read(upload)
                except JobInvalid as exc:
                    self.add_error("users_file", exc.errors["users_file"])
                else:
                    if not data["ids"]:
                        self.add_error("users_file", _("The file holds no user ids."))
        else:
            data["ids"] = None
        return data

    def job_arguments(self) -> dict:
        data = self.cleaned_data
        arguments = {"user_ids": data["ids"], "extractor": data["extractor"], "options": self.options()}
        if data.get("who") == "everyone":
            arguments["everyone"] = True
        for name in ("chunk_size", "max_attempts", "priority", "max_workers"):
            if data.get(name) is not None:
                arguments[name] = data[name]
        return arguments

    def add_service_errors(self, errors: dict[str, str]) -> None:
        """Show the service's field errors on the form's fields (an option's on its own field)."""
        extractor = self.cleaned_data.get("extractor")
        for field, message in errors.items():
            option_field_name = f"{extractor}{OPTION_SEPARATOR}{field.removeprefix('options.')}"
            if field == "user_ids":
                self.add_error(
                    "users_file" if self.cleaned_data.get("who") == "file" else "user_ids", message
                )
            elif field.startswith("options.") and option_field_name in self.fields:
                self.add_error(option_field_name, message)
            elif field in self.fields:
                self.add_error(field, message)
            else:
                self.add_error(None, f"{field}: {message}")
