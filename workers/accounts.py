"""Sign-in housekeeping (queue ``intake`` by the ``accounts.*`` route): ended sessions and
spent reset links leave their tables after the retention (pipeline/accounts/retention.py)."""

from __future__ import annotations

from pipeline.accounts import retention
from workers import runtime
from workers.app import app

MAX_ROWS_PER_RUN = 200_000
CHUNK = 10_000


@app.task(name="accounts.prune_sign_ins", acks_late=False)
def prune_sign_ins() -> dict:
    """Not acks_late: a lost run is the next day's work."""
    before = retention.cutoff()
    return {key: runtime.delete_in_chunks(prune, limit=MAX_ROWS_PER_RUN, chunk=CHUNK, before=before)
            for key, prune in (("sessions", retention.prune_sessions_chunk),
                               ("password_resets", retention.prune_resets_chunk))}
