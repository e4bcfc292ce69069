"""Event outbox housekeeping (queue ``intake`` by the ``events.*`` route): sent events older
than the retention leave the table in bounded deletes. Publishing itself is not a task: the
writers' own relays and ``relaypacs events-relay`` do it (pipeline/ops/outbox.py)."""

from __future__ import annotations

from pipeline.ops import outbox
from workers import runtime
from workers.app import app

MAX_ROWS_PER_RUN = 200_000
CHUNK = 10_000


@app.task(name="events.prune_outbox", acks_late=False)
def prune_outbox() -> dict:
    """Not acks_late: a lost run is the next hour's work."""
    cutoff = outbox.retention_cutoff(keep_days=runtime.settings().events_retention_days)
    return {"removed": runtime.delete_in_chunks(outbox.prune_chunk, limit=MAX_ROWS_PER_RUN, chunk=CHUNK,
                                                cutoff=cutoff)}
