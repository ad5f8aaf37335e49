"""Webhook endpoints (configured here only, by people allowed to) and their deliveries, attempt by
attempt, with a redeliver action. Writes go through webhooks.services."""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from eventproject.admin_guards import GuardedAdmin
from eventproject.charts import status_badge

from .event_types import event_types
from .models import Attempt, Delivery, Endpoint
from .services import delivery_redeliver, endpoint_create, endpoint_secret_renew


class EndpointForm(forms.ModelForm):
    url = forms.URLField(
        max_length=1000,
        assume_scheme="https",  # Django 6's default; a receiver's URL names its scheme anyway
        widget=forms.URLInput(attrs={"class": "vURLField"}),
        label=capfirst(Endpoint._meta.get_field("url").verbose_name),
        help_text=Endpoint._meta.get_field("url").help_text,
    )
    events = forms.MultipleChoiceField(
        choices=(),
        widget=forms.CheckboxSelectMultiple,
        label=capfirst(Endpoint._meta.get_field("events").verbose_name),
    )

    class Meta:
        model = Endpoint
        fields = ["name", "url", "events", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["events"].choices = [(kind.name, f"{kind.name}: {kind.label}") for kind in event_types()]
        self.fields["events"].help_text = Endpoint._meta.get_field("events").help_text


@admin.register(Endpoint)
class EndpointAdmin(GuardedAdmin):
    form = EndpointForm
    list_display = ["name", "url", "event_list", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name"]
    readonly_fields = ["deliveries_link", "created_by", "created_at", "secret_renewed_at"]
    change_form_template = "admin/webhooks/endpoint/change_form.html"

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    def get_fields(self, request, obj=None):
        return ["name", "url", "events", "active", *(self.readonly_fields if obj else [])]

    @admin.display(description=gettext_lazy("events"))
    def event_list(self, endpoint: Endpoint) -> str:
        return ", ".join(endpoint.events)

    @admin.display(description=gettext_lazy("deliveries"))
    def deliveries_link(self, endpoint: Endpoint) -> str:
        url = reverse("admin:webhooks_delivery_changelist") + f"?endpoint__id__exact={endpoint.id}"
        return format_html('<a href="{}">{}</a>', url, _("Deliveries to this endpoint"))

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        endpoint, secret = endpoint_create(
            name=obj.name, url=obj.url, events=obj.events, active=obj.active, created_by=request.user
        )
        obj.pk = endpoint.pk
        obj.refresh_from_db()
        request.webhook_secret = secret  # shown by response_add, this once

    def response_add(self, request, obj, post_url_continue=None):
        return self._secret_page(
            request, obj, _("The endpoint %(name)s was added.") % {"name": obj.name}, request.webhook_secret
        )

    def get_urls(self):
        own = [
            path(
                "<path:object_id>/renew-secret/",
                self.admin_site.admin_view(self.renew_secret_view),
                name="webhooks_endpoint_renew_secret",
            )
        ]
        return own + super().get_urls()

    def renew_secret_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        endpoint = self.get_object(request, object_id)
        if endpoint is None:
            raise Http404(_("No endpoint %(id)s") % {"id": object_id})
        if not self.has_change_permission(request, endpoint):
            raise PermissionDenied
        secret = endpoint_secret_renew(endpoint)
        return self._secret_page(
            request, endpoint, _("The endpoint %(name)s has a new secret.") % {"name": endpoint.name}, secret
        )

    def _secret_page(self, request, endpoint: Endpoint, headline: str, secret: str) -> HttpResponse:
        """The one page that ever shows a secret: not cached, not stored, not logged."""
        context = {
            **self.admin_site.each_context(request),
            "title": _("Signing secret"),
            "opts": self.opts,
            "endpoint": endpoint,
            "headline": headline,
            "secret": secret,
        }
        response = TemplateResponse(request, "admin/webhooks/endpoint/secret.html", context)
        response["Cache-Control"] = "no-store"
        return response


class AttemptInline(admin.TabularInline):
    model = Attempt
    readonly_fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]
    fields = tuple(readonly_fields)
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("webhooks.view_delivery")  # attempts are part of their delivery


@admin.register(Delivery)
class DeliveryAdmin(GuardedAdmin):
    """Read-only: deliveries change only by being sent, or redelivered (the action)."""

    list_display = [
        "id",
        "event_type",
        "message_id",
        "endpoint",
        "status_badge",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
        "created_at",
        "finished_at",
    ]
    list_display_links = ["id", "event_type"]
    list_filter = ["status", "endpoint", "event__type"]
    list_select_related = ["event", "endpoint"]
    search_exact = "event__message_id"
    actions = ["redeliver_selected"]
    inlines = [AttemptInline]

    class Media:
        css = {"all": ["webhooks/admin.css"]}

    readonly_fields = [
        "event_type",
        "message_id",
        "endpoint",
        "status",
        "attempt_count",
        "next_attempt_at",
        "give_up_at",
        "created_at",
        "finished_at",
        "last_status_code",
        "last_error",
        "body",
    ]
    fields = tuple(readonly_fields)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the page is read-only; redeliver is an action

    def has_delete_permission(self, request, obj=None):
        return False

    def has_redeliver_permission(self, request, obj=None):
        return request.user.has_perm("webhooks.change_delivery")

    @admin.display(description=gettext_lazy("event type"), ordering="event__type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.type

    @admin.display(description=gettext_lazy("message id"))
    def message_id(self, delivery: Delivery) -> str:
        return delivery.event.message_id

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_badge(self, delivery: Delivery) -> str:
        return status_badge(delivery.status, delivery.get_status_display())

    @admin.display(description=gettext_lazy("body"))
    def body(self, delivery: Delivery) -> str:
        data = {"type": delivery.event.type, "data": delivery.event.data}
        return format_html("<pre>{}</pre>", json.dumps(data, ensure_ascii=False, indent=2))

    @admin.action(description=gettext_lazy("Redeliver selected deliveries"), permissions=["redeliver"])
    def redeliver_selected(self, request, queryset):
        done = [str(delivery.id) for delivery in queryset if delivery_redeliver(delivery)]
        if done:
            self.message_user(
                request,
                ngettext(
                    "Delivery %(ids)s will be sent again.",
                    "Deliveries %(ids)s will be sent again.",
                    len(done),
                )
                % {"ids": ", ".join(done)},
                messages.SUCCESS,
            )
        if len(done) < queryset.count():
            self.message_user(
                request, _("Deliveries still pending or being sent were left as they are."), messages.WARNING
            )
