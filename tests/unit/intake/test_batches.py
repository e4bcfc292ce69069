"""Where a batch stands, on SQLite: settled files go out after the quiet period whatever an
unfinished upload does, and the report names the unfinished files with their offsets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.intake import batches
from pipeline.intake.batch_report import batch_report
from pipeline.models import Batch, BatchState, Upload, UploadState, utcnow


@pytest.fixture
def batch_with_straggler(session, make_token):
    """A completed batch: one file parsed, one cut off at 40 % two minutes ago."""
    from pipeline.accounts.users import user_for_token

    user = user_for_token(session, make_token("Clinic A"))
    past = utcnow() - timedelta(minutes=2)
    batch = Batch(facility_id=user.facility_id, user_id=user.id, state=BatchState.COMPLETED,
                  completed_at=past, last_activity_at=past)
    session.add(batch)
    session.flush()
    for name, state, offset in (("whole.dcm", UploadState.PARSED, 100),
                                ("late.dcm", UploadState.RECEIVING, 40)):
        session.add(Upload(id=name.replace(".", "x"), batch_id=batch.id, facility_id=batch.facility_id,
                           user_id=user.id, filename=name, length=100, offset=offset, state=state,
                           created_at=past, updated_at=past, expires_at=past + timedelta(days=1)))
    session.commit()
    return batch


def test_a_completed_batch_goes_out_after_the_quiet_period_whatever_a_straggler_does(
        session, batch_with_straggler):
    batch = batch_with_straggler
    assert not batches.claim_completed_batch(session, batch.id)  # not settled, no quiet given
    assert not batches.claim_completed_batch(session, batch.id, quiet=timedelta(minutes=5))
    assert batches.quiet_completed_batches(session, timedelta(seconds=60)) == [batch.id]
    # A file in the gateway's own hands (being parsed) is waited for; only a client's is not.
    parsing = session.get(Upload, "wholexdcm")
    parsing.state = UploadState.ASSEMBLED
    session.commit()
    assert not batches.claim_completed_batch(session, batch.id, quiet=timedelta(seconds=60))
    assert batch_report(session, batch, quiet_seconds=60)["waiting"]["quiet_period_ends_at"] is None
    parsing.state = UploadState.PARSED
    session.commit()
    assert batches.claim_completed_batch(session, batch.id, quiet=timedelta(seconds=60))
    session.commit()
    session.refresh(batch)
    assert batch.state == BatchState.FORWARDING and batches.forwarding_started(batch)
    # Nothing left to send, but the straggler is not settled: not done yet.
    assert not batches.settle_batch(session, batch.id)


def test_an_open_batch_is_quiet_whatever_its_unfinished_uploads(session, batch_with_straggler):
    batch = batch_with_straggler
    batch.state = BatchState.OPEN
    session.commit()
    assert [b.id for b in batches.quiet_open_batches(session, timedelta(seconds=60))] == [batch.id]


def test_the_report_names_unfinished_files_with_their_offsets(session, batch_with_straggler):
    report = batch_report(session, batch_with_straggler, quiet_seconds=60)
    waiting = report["waiting"]
    assert [(f["filename"], f["state"], f["offset"], f["length"]) for f in waiting["unfinished_files"]] == [
        ("late.dcm", "receiving", 40, 100)]
    assert waiting["files_receiving"] == 1 and waiting["files_processing"] == 0
    assert waiting["quiet_period_ends_in_seconds"] == 0.0  # over: the settled files may go
    assert waiting["conflicts_open"] == 0 and waiting["deliveries_pending"] == 0
