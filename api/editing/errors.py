"""How the errors of metadata edits answer: JSON 4xx bodies like every other API error."""

from __future__ import annotations

from flask import Blueprint

from api.http.errors import error_response
from pipeline.dicom.attributes import MetadataError
from pipeline.editing.batch_edits import EditConflict
from pipeline.editing.study_organisation import NotFound
from pipeline.editing.templates import TemplateNameTaken


def register(blueprint: Blueprint) -> None:
    """Map the domain's refusals to 400 (invalid), 404 (not there), 409 (conflict)."""

    @blueprint.errorhandler(MetadataError)
    def _invalid(exc: MetadataError):  # noqa: ANN202
        return error_response(400, str(exc))

    @blueprint.errorhandler(NotFound)
    def _missing(exc: NotFound):  # noqa: ANN202
        return error_response(404, str(exc.args[0]) if exc.args else "not found")

    @blueprint.errorhandler(TemplateNameTaken)
    @blueprint.errorhandler(EditConflict)
    def _conflict(exc: Exception):  # noqa: ANN202
        return error_response(409, str(exc))
