"""What every ModelAdmin of the project shares: ids from the URL are checked before any query."""

import re

from django.contrib import admin

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
    database (a 500: PostgreSQL refuses NUL in text)."""

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
        return super().get_search_results(request, queryset, search_term.replace("\x00", ""))
