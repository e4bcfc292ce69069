"""Events that workers publish after their commits (pipeline/events.py has the contract)."""

from __future__ import annotations

import logging

from pipeline import events
from pipeline.forwarding import ForwardResult
from pipeline.models import Study
from workers import runtime

log = logging.getLogger(__name__)


def bus() -> events.EventBus:
    return events.event_bus(runtime.settings().redis_url)


def study_forwarded(study_id: int, destination_id: int, result: ForwardResult) -> None:
    """study.forwarded after a forwarding run that changed something; never raises."""
    if not (result.delivered or result.failed):
        return
    try:
        with runtime.session_scope() as session:
            study = session.get(Study, study_id)
            facility_id = study.facility_id if study else None
        if facility_id is None:
            return
        events.publish_safely(bus(), events.study_forwarded(
            facility_id, study_id, destination_id, delivered=result.delivered,
            failed=result.failed, deferred=result.deferred))
    except Exception as exc:  # noqa: BLE001 - the forwarding is committed; the event is a courtesy
        log.warning("study.forwarded not published: %s", type(exc).__name__)
