"""The shapes of the extraction API: input serializers validate, output serializers render."""

from datetime import UTC

from django.conf import settings
from django.contrib.auth.models import User
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..imports import import_report, import_summary_text
from ..models import EVENT_COLUMNS, Category, DataImport, ExtractedEvent, ExtractionState, UserProfile


class StateOutput(serializers.ModelSerializer):
    class Meta:
        model = ExtractionState
        fields = [
            "status",
            "attempted_at",
            "error",
            "extracted_at",
            "event_count",
            "extractor",
            "extractor_version",
            "input_version",
            "input_fingerprint",
        ]
        read_only_fields = fields


class UserOutput(serializers.ModelSerializer):
    behavior_count = serializers.IntegerField(read_only=True)
    extraction_state = StateOutput(
        read_only=True,
        allow_null=True,
        help_text="null when the user was never extracted, or without extraction.view_extractionstate",
    )
    needs_extraction = serializers.BooleanField(read_only=True)

    class Meta:
        model = UserProfile
        fields = [
            "user_id",
            "attributes",
            "input_version",
            "behavior_count",
            "needs_extraction",
            "extraction_state",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is not None and not request.user.has_perm("extraction.view_extractionstate"):
            data["extraction_state"] = None  # its own permission, as in the admin
        return data


class EventOutput(serializers.ModelSerializer):
    class Meta:
        model = ExtractedEvent
        fields = ["id", *EVENT_COLUMNS]
        read_only_fields = fields


class BoundedDateTimeField(serializers.DateTimeField):
    """A time from 1900 to 9998: beyond, the conversion to UTC overflows (0001-01-01 in UTC+8 is in
    year 0, inside DRF too), and no event starts there anyway."""

    default_error_messages = {"out_of_range": gettext_lazy("Give a time from year 1900 to 9998.")}

    def enforce_timezone(self, value):
        if not 1900 <= value.year <= 9998:
            self.fail("out_of_range")
        return super().enforce_timezone(value).astimezone(UTC)


class EventFilter(serializers.Serializer):
    """The event list's and the exports' input: its validated data are events_filter()'s arguments."""

    user = serializers.CharField(required=False, max_length=settings.USER_ID_MAX_CHARS, help_text="A user id")
    type = serializers.CharField(required=False, max_length=64, help_text="An event type, e.g. purchase")
    category = serializers.ChoiceField(required=False, choices=Category.choices)
    since = BoundedDateTimeField(required=False, help_text="Events starting at or after this time")
    until = BoundedDateTimeField(required=False, help_text="Events starting before this time")

    def validate(self, data):
        if "since" in data and "until" in data and data["until"] <= data["since"]:
            raise serializers.ValidationError({"until": _("must be later than since")})
        return data


class RejectedRow(serializers.Serializer):
    line = serializers.IntegerField()
    reason = serializers.CharField()


class ImportOutput(serializers.ModelSerializer):
    """An import's state, counts and report, as the admin shows them."""

    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    percent = serializers.FloatField(read_only=True, help_text="How far through the file")
    rows_read = serializers.IntegerField(read_only=True, help_text="Rows (or lines) read so far")
    # The metaclass takes the field out of the class: Serializer.errors stays as it is.
    errors = serializers.SerializerMethodField(help_text="The first rejected rows")  # type: ignore[assignment]
    report = serializers.SerializerMethodField(help_text="The rejected rows as `file:line: reason`")
    summary = serializers.SerializerMethodField(help_text="The closing line, as import_data prints it")

    class Meta:
        model = DataImport
        fields = [
            "id",
            "kind",
            "status",
            "file_name",
            "file_size",
            "file_format",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "percent",
            "line",
            "rows_read",
            "imported",
            "updated",
            "duplicates",
            "rejected",
            "error",
            "errors",
            "report",
            "summary",
        ]
        read_only_fields = fields

    @extend_schema_field(RejectedRow(many=True))
    def get_errors(self, data_import: DataImport) -> list[dict]:
        return [{"line": line, "reason": reason} for line, reason in data_import.errors]

    def get_report(self, data_import: DataImport) -> list[str]:
        return import_report(data_import)

    def get_summary(self, data_import: DataImport) -> str:
        return import_summary_text(data_import)
