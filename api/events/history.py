"""``GET /api/v1/events/history?after=ID&limit=N``: replay of the event outbox from PostgreSQL,
for debugging and for consumers that were away longer than the Redis stream's window.

Ids are the ones the live stream sends (``<ms>-<seq>``, pipeline/ops/outbox.py), in order, so a
consumer pages with the last id it saw. Scoped like every read: a user sees the events of the
facilities they may read (``readable_facility_ids``), an admin every facility's.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, Field

from api.http.auth import current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts.scoping import readable_facility_ids
from pipeline.ops import outbox

blueprint = Blueprint("event_history", __name__)


class HistoryQuery(BaseModel):
    after: str = Field("0-0", max_length=32, pattern=r"^[0-9]{1,15}(-[0-9]{1,7})?$",
                       description="the last event id seen (an SSE id); 0-0 from the oldest kept")
    limit: int = Field(100, ge=1, le=1000)


@blueprint.route("/history", methods=["GET"])
@require()
@operation("Replay events after an id, oldest first (CloudEvents; kept at least a week)", query=HistoryQuery)
def history():  # noqa: ANN201
    query: HistoryQuery = g.query
    after = outbox.parse_id(query.after)
    if after is None:
        raise ApiError(400, "after must be an event id like 1711111111111-0")
    # Admins every facility; radiologists the facilities they serve; anyone else their own.
    rows = outbox.history(db(), after=after, limit=query.limit + 1,
                          facility_ids=readable_facility_ids(db(), current_user()))
    page = rows[:query.limit]
    last = outbox.format_id(page[-1].position) if page else query.after  # type: ignore[arg-type]
    return jsonify({"events": [outbox.envelope(r) for r in page], "after": last,
                    "more": len(rows) > query.limit})
