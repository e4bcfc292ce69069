"""Path converters of the API's URL map: ``<id:name>`` is a row id, a whole number from 1 to
PostgreSQL's integer maximum (``pipeline.models.MAX_ROW_ID``). Anything else in its place is
answered 404 before a view or a statement runs, so no view checks the bound itself, and no id
past the column's range reaches a (prepared) statement."""

from __future__ import annotations

from werkzeug.exceptions import NotFound
from werkzeug.routing import Map
from werkzeug.routing.converters import IntegerConverter, ValidationError

from pipeline.models import MAX_ROW_ID


class RowIdConverter(IntegerConverter):
    def __init__(self, map: Map) -> None:  # noqa: A002 (werkzeug's name)
        super().__init__(map, min=1, max=MAX_ROW_ID)

    def to_python(self, value: str) -> int:
        try:
            return super().to_python(value)
        except ValidationError:
            # Not a "no such route": werkzeug would then answer 405 when a rule of the same
            # path but another method came first (GET before PATCH). The path is right, the
            # row does not exist.
            raise NotFound(f"no such id: {value}") from None


CONVERTERS = {"id": RowIdConverter}
