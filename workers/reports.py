"""The report poll's task (routed to the ``reports`` queue, whose pool does nothing else: a long
poll never holds up forwarding on ``pacs``, and each pool scales on its own). Beat runs it
every minute; each run asks each DICOMweb destination about at most ``limit`` due studies
(pipeline/reports/poll.py has the schedule and the backoff) and commits per destination with
its report.status_changed and notification.created events (the outbox).

``now`` (ISO 8601) lets tests and operators poll as of a given time; unset, real time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pipeline.models import Destination, utcnow
from pipeline.reports import poll
from pipeline.reports.status_notices import take_made
from workers import event_publishing, runtime
from workers.app import app

log = logging.getLogger(__name__)


@app.task(name="reports.poll_pacs", acks_late=False, soft_time_limit=240, time_limit=300)
def poll_pacs(now: str | None = None, limit: int = 500) -> dict:
    """Not acks_late: a lost tick is the next minute's work. Per destination its own
    transaction, so one unreachable PACS never holds back the others' reports."""
    moment = datetime.fromisoformat(now) if now else utcnow()
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    box, store = runtime.secret_box(), runtime.store()
    with runtime.session_scope() as session:
        destination_ids = [d.id for d in poll.pollable_destinations(session)]
    out: dict[int, dict] = {}
    for destination_id in destination_ids:
        try:
            with runtime.session_scope() as session:
                destination = session.get_one(Destination, destination_id)
                result = poll.poll_destination(session, store, destination, lambda d: poll.reader_for(d, box),
                                               moment, limit)
                event_publishing.report_events(session, result.events)  # committed with the poll's rows
                # The senders' notices of final/amended reports: notification.created now, the
                # mail from the beat's sweep (consults.check_due) within a minute.
                event_publishing.notices(session, take_made(session))
        except Exception as exc:  # noqa: BLE001 - one destination's failure must not stop the others
            log.warning("report poll of destination %s failed: %s", destination_id, type(exc).__name__)
            out[destination_id] = {"state": "error", "error": type(exc).__name__}
            continue
        out[destination_id] = {"state": result.state, "skipped": result.skipped,
                               "studies_checked": result.studies_checked, "documents": result.documents_read,
                               "more_due": result.more_due}
    return out
