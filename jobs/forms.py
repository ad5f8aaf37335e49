"""The admin's start form: everything it accepts goes to services.job_start like the API's input."""

import json
import re

from django import forms
from django.conf import settings

from extraction.extractors import extractor_names

USER_ID_SEPARATORS = re.compile(r"[\s,;，]+")
USER_ID_MAX_CHARS = 128  # as the API's user_ids items


def too_many_ids(count: int) -> str:
    return (
        f"More than {settings.JOBS_MAX_USER_IDS:,} user ids ({count:,} so far): at most "
        f"{settings.JOBS_MAX_USER_IDS:,} per job (JOBS_MAX_USER_IDS, as in the API). Split the list."
    )


def ids_from_file(upload) -> list[str]:
    """User ids, one a line, read line by line and counted like the API counts its list (every id,
    duplicates too); stops at the first line over a limit. Raises ValidationError naming it."""
    ids: list[str] = []
    for number, raw in enumerate(upload, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise forms.ValidationError(f"Line {number} is not UTF-8 text.") from None
        if not line or line.startswith("#") or (not ids and line == "user_id"):
            continue
        if len(line) > USER_ID_MAX_CHARS:
            raise forms.ValidationError(
                f"Line {number}: a user id longer than {USER_ID_MAX_CHARS} characters."
            )
        ids.append(line)
        if len(ids) > settings.JOBS_MAX_USER_IDS:
            raise forms.ValidationError(too_many_ids(len(ids)))
    return ids


class JobStartForm(forms.Form):
    WHO = [
        ("needing", "Everyone needing extraction (not in another active job)"),
        ("list", "These users (pasted below)"),
        ("file", "Users in a file (one id per line)"),
    ]

    extractor = forms.ChoiceField(choices=[], initial="rules")
    who = forms.ChoiceField(label="Users", choices=WHO, initial="needing", widget=forms.RadioSelect)
    user_ids = forms.CharField(
        label="User ids",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="Separated by new lines, spaces or commas.",
    )
    users_file = forms.FileField(
        label="File of user ids",
        required=False,
        help_text=f"UTF-8 text, one id per line; a 'user_id' header and # comments are skipped. At most "
        f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g} MB and {settings.JOBS_MAX_USER_IDS:,} ids.",
    )
    options = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Extractor options as a JSON object.",
    )
    chunk_size = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=settings.JOBS_CHUNK_SIZE_LIMIT,
        help_text=f"Users a worker claims at a time. Default: the extractor's own (rules 500, llm 200), "
        f"else {settings.JOBS_CHUNK_SIZE}.",
    )
    max_attempts = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=settings.JOBS_MAX_ATTEMPTS_LIMIT,
        help_text=f"Default {settings.JOBS_MAX_ATTEMPTS}.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["extractor"].choices = [(name, name) for name in extractor_names()]

    def clean_options(self) -> dict:
        text = self.cleaned_data["options"].strip() or "{}"
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise forms.ValidationError("Must be a JSON object, like {}.")
        return options

    def clean(self):
        data = super().clean()
        who = data.get("who")
        if who == "list":
            ids = [part for part in USER_ID_SEPARATORS.split(data.get("user_ids", "")) if part]
            if not ids:
                self.add_error("user_ids", "Paste at least one user id.")
            elif len(ids) > settings.JOBS_MAX_USER_IDS:
                self.add_error("user_ids", too_many_ids(len(ids)))
            data["ids"] = ids
        elif who == "file":
            upload = data.get("users_file")
            if not upload:
                self.add_error("users_file", "Choose a file.")
            elif upload.size > settings.UPLOAD_MAX_BYTES:
                self.add_error(
                    "users_file", f"The file is larger than {settings.UPLOAD_MAX_BYTES / 1_000_000:g} MB."
                )
            else:
                try:
                    data["ids"] = ids_from_file(upload)
                except forms.ValidationError as exc:
                    self.add_error("users_file", exc)
                else:
                    if not data["ids"]:
                        self.add_error("users_file", "The file holds no user ids.")
        else:
            data["ids"] = None
        return data

    def job_arguments(self) -> dict:
        data = self.cleaned_data
        arguments = {"user_ids": data["ids"], "extractor": data["extractor"], "options": data["options"]}
        for name in ("chunk_size", "max_attempts"):
            if data.get(name) is not None:
                arguments[name] = data[name]
        return arguments

    def add_service_errors(self, errors: dict[str, str]) -> None:
        """Show the service's field errors on the form's fields."""
        for field, message in errors.items():
            if field == "user_ids":
                self.add_error(
                    "users_file" if self.cleaned_data.get("who") == "file" else "user_ids", message
                )
            elif field.startswith("options"):
                self.add_error("options", f"{field}: {message}")
            elif field in self.fields:
                self.add_error(field, message)
            else:
                self.add_error(None, f"{field}: {message}")
