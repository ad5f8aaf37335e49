"""Imports over HTTP: follow a file's import (started in the admin) to its end, with its report."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics

from extraction.models import DataImport

from .access import VIEW_IMPORT, Guarded
from .serializers import ImportOutput
from .views import ERRORS, JobPages


class ImportsBase(Guarded):
    """Reads need extraction.view_dataimport (operators have it)."""

    read_permissions = (VIEW_IMPORT,)
    serializer_class = ImportOutput
    queryset = DataImport.objects.select_related("created_by").order_by("-id")


@extend_schema(
    tags=["imports"], summary="Imports, newest first", responses={200: ImportOutput(many=True), **ERRORS}
)
class ImportsView(ImportsBase, generics.ListAPIView):
    pagination_class = JobPages


@extend_schema(
    tags=["imports"],
    summary="An import with its progress and report",
    description="Poll it while `status` is queued or running: `percent` is how far through the file "
    "(compressed bytes for .gz), the counts and `report` (rejected rows as `file:line: reason`, the "
    "first 1,000) grow with every batch; `summary` is the line `import_data` prints.",
    responses={200: ImportOutput, **ERRORS},
)
class ImportView(ImportsBase, generics.RetrieveAPIView):
    pass
