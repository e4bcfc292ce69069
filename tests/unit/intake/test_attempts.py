"""Counting the attempts at an upload's work that killed their worker, on the SQLite schema."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.intake import attempts
from pipeline.intake import uploads as intake
from pipeline.models import Batch, UploadState


@pytest.fixture
def assembled(session, make_token):
    from pipeline.accounts.users import user_for_token

    user = user_for_token(session, make_token("Clinic A"))
    batch = Batch(facility_id=user.facility_id, user_id=user.id)
    session.add(batch)
    session.flush()
    upload = intake.add_upload(session, intake.new_upload(
        batch=batch, user_id=user.id, length=10, metadata={}, max_bytes=100,
        expiry=timedelta(hours=1)))
    upload.state = UploadState.ASSEMBLED
    session.commit()
    return upload


def test_attempts_that_end_never_add_up(session, assembled):
    for _ in range(5):
        attempt = attempts.begin(session, assembled.id, max_losses=2)
        session.commit()
        assert attempt.go and attempt.batch_id == assembled.batch_id
        attempts.end(session, assembled.id)
        session.commit()
    session.refresh(assembled)
    assert (assembled.state, assembled.unfinished_attempts) == (UploadState.ASSEMBLED, 0)


def test_after_two_dead_workers_the_upload_is_dead_lettered(session, assembled):
    assert attempts.begin(session, assembled.id, max_losses=2).go  # the worker dies: no end()
    session.commit()
    assert attempts.begin(session, assembled.id, max_losses=2).go  # and again
    session.commit()
    third = attempts.begin(session, assembled.id, max_losses=2)
    session.commit()
    assert not third.go and third.batch_id == assembled.batch_id
    session.refresh(assembled)
    assert assembled.state == UploadState.QUARANTINED
    assert assembled.quarantine_reason == "worker_lost"
    assert "2 times" in assembled.quarantine_detail
    # A redelivery after that finds nothing to do.
    assert not attempts.begin(session, assembled.id, max_losses=2).go


def test_quarantine_never_overwrites_an_ended_upload(session, assembled):
    assembled.state = UploadState.TERMINATED
    session.commit()
    assert not attempts.quarantine(session, assembled.id, "parse_failed", "x")
    assert not attempts.begin(session, assembled.id, max_losses=2).go
    session.refresh(assembled)
    assert assembled.state == UploadState.TERMINATED
