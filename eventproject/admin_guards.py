"""What every ModelAdmin of the project shares: ids from the URL are checked before any query."""

import re

from django.contrib import admin
from django.utils.translation import gettext_lazy

INTEGER_ID = re.compile(r"[0-9]{1,19}")


def object_id_valid(model, object_id: str) -> bool:
    """Whether `object_id` (from a URL) can name a row of `model` at all.

    An integer key must be digits within 64 bits (SQLite overflows, PostgreSQL errors on more);
    a text key must fit the column and hold no NUL (PostgreSQL refuses it in text).
    """
    field = model._meta.pk
    while field.is_relation:
        field = field.target_field
    if field.get_internal_type() in ("AutoField", "BigAutoField", "IntegerField", "BigIntegerField"):
        return bool(INTEGER_ID.fullmatch(object_id)) and int(object_id) < 2**63
    return "\x00" not in object_id and len(object_id) <= (field.max_length or len(object_id))


def integer_id(value: str | None) -> int | None:
    """A 64-bit id from a query parameter, or None."""
    return int(value) if value and INTEGER_ID.fullmatch(value) and int(value) < 2**63 else None


class GuardedAdmin(admin.ModelAdmin):
    """A bad object id in the URL is "no such object" (the admin's redirect with a message), and a
    search term or a list filter's value loses NUL characters, instead of an error from the
    database (a 500: PostgreSQL refuses NUL in text).

    `search_exact` names a column searched for exactly the term typed (an id: case and inner
    spaces kept), on its index: Django's "=" search compares case-insensitively, which reads every
    row of a table of millions (a user id, 0.3 s a query at 3 million behaviours, against 0.2 ms)."""

    search_exact = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.search_exact:
            self.search_fields = [self.search_exact]
            self.search_help_text = self.search_help_text or gettext_lazy("Finds the exact id typed.")

    def changelist_view(self, request, extra_context=None):
        if any("\x00" in value for _, values in request.GET.lists() for value in values):
            cleaned = request.GET.copy()
            for key, values in request.GET.lists():
                cleaned.setlist(key, [value.replace("\x00", "") for value in values])
            request.GET = cleaned
        return super().changelist_view(request, extra_context)

    def get_object(self, request, object_id, from_field=None):
        if from_field is None and not object_id_valid(self.model, object_id):
            return None
        return super().get_object(request, object_id, from_field)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.replace("\x00", "")
        if not self.search_exact:
            return super().get_search_results(request, queryset, term)
        return (queryset.filter(**{self.search_exact: term.strip()}) if term.strip() else queryset), False
