"""Report statuses: legal moves only (IllegalTransition otherwise), each a history row and a
report.status_changed event with from and to; the addendum UID root is recognised."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from pipeline.models import RadiologyReport, ReportStatusChange, Study, utcnow
from pipeline.reports import ADDENDUM_UID_PREFIX, is_own_addendum, new_addendum_uid, status


def _report(session) -> RadiologyReport:
    from pipeline.accounts.users import get_or_create_facility

    facility = get_or_create_facility(session, "North")
    study = Study(facility_id=facility.id, study_instance_uid="1.2.3")
    session.add(study)
    session.flush()
    report = RadiologyReport(facility_id=facility.id, study_id=study.id, study_instance_uid="1.2.3",
                             source="manual", status="final", text="ok", text_sha256="x" * 64)
    session.add(report)
    session.flush()
    return report


def test_moves_are_rows_and_events(session):
    report = _report(session)
    first = status.record_initial(session, report, by_user_id=None, reason=None, now=utcnow())
    event = status.change_status(session, report, "amended", by_user_id=None, reason="typo", now=utcnow())
    body = json.loads(event.to_json())
    assert (body["type"], body["report_id"], body["from"], body["to"]) == (
        "report.status_changed", report.id, "final", "amended")
    assert json.loads(first.to_json())["from"] is None
    rows = session.scalars(select(ReportStatusChange).order_by(ReportStatusChange.id)).all()
    assert [(r.from_status, r.to_status, r.reason) for r in rows] == [(None, "final", None),
                                                                       ("final", "amended", "typo")]
    with pytest.raises(status.IllegalTransition) as refused:
        status.change_status(session, report, "preliminary", by_user_id=None, reason=None, now=utcnow())
    assert refused.value.allowed == ["appended", "cancelled"]
    status.change_status(session, report, "cancelled", by_user_id=None, reason=None, now=utcnow())
    with pytest.raises(status.IllegalTransition):
        status.change_status(session, report, "final", by_user_id=None, reason=None, now=utcnow())


def test_every_status_has_its_moves_written_down():
    from pipeline.models import ReportStatus

    assert set(status.TRANSITIONS) == set(ReportStatus)
    assert all(to in ReportStatus for moves in status.TRANSITIONS.values() for to in moves)


def test_addendum_uids():
    uid = new_addendum_uid()
    assert len(uid) <= 64 and uid.startswith(ADDENDUM_UID_PREFIX) and is_own_addendum(uid)
    assert all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in uid.split("."))
    assert not is_own_addendum("1.2.840.1") and not is_own_addendum(None)
