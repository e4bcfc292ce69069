"""The job that fills a case: resumable after a crash mid-way (same bytes, nothing twice),
waits for cold-tier bytes with a restore request and says so, then finishes once they are
back; the source study's originals are never changed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from pipeline.models import (
    Preparation,
    RestoreRequest,
    StoredObject,
    TeachingCase,
    TeachingIdentityMap,
    TeachingInstance,
    utcnow,
)
from pipeline.teaching import cases, preparation
from pipeline.teaching.profile import DeidOptions
from tests import teaching_seed

SECRET = b"preparation-test-secret"


@pytest.fixture
def setup(app, session):
    store = app.extensions["relaypacs"].store
    author = teaching_seed.user(session, "Clinic P", "teaching_publisher")
    study = teaching_seed.delivered_study(session, store, facility_id=author.facility_id,
                                          user_id=author.id, ct_count=4)
    person = session.get(cases.User, author.id)
    case = cases.add_from_study(session, person, study.study_id, {"title": "t"}, DeidOptions())
    session.commit()
    originals = {key: store.open(key).read() for key in _keys(session, study)}
    return store, study, case.id, originals


def _keys(session, study):
    from pipeline.models import Instance

    return list(session.scalars(select(Instance.object_key).where(Instance.study_id == study.study_id)))


class Crash(RuntimeError):
    pass


def test_a_crash_mid_way_resumes_where_it_stopped(session, setup):
    store, study, case_id, originals = setup
    commits = {"n": 0}

    def crash_after_two():
        session.commit()
        commits["n"] += 1
        if commits["n"] == 2:
            raise Crash("worker killed")

    with pytest.raises(Crash):
        preparation.prepare_case(session, store, case_id, secret=SECRET, uid_root="2.25",
                                 checkpoint=crash_after_two)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(TeachingIdentityMap)) == 2
    first_two = {r.sop_instance_uid: r.sha256 for r in session.scalars(select(TeachingInstance))}

    outcome = preparation.prepare_case(session, store, case_id, secret=SECRET, uid_root="2.25",
                                       checkpoint=session.commit)
    assert outcome.copied == 2 and outcome.state == Preparation.READY
    rows = {r.sop_instance_uid: r.sha256 for r in session.scalars(select(TeachingInstance))}
    assert len(rows) == 4 and {k: rows[k] for k in first_two} == first_two
    assert session.get(TeachingCase, case_id).package_key is not None
    # The originals are untouched, and nothing of the case lives under their keys.
    assert {key: store.open(key).read() for key in originals} == originals
    copies = session.scalars(select(TeachingInstance)).all()
    assert all(r.object_key.startswith(f"teaching/{case_id}/") for r in copies)


def test_cold_bytes_are_restored_first_and_the_case_waits_saying_so(session, setup):
    store, study, case_id, _ = setup
    from pipeline.models import Instance

    cold = session.scalars(select(Instance).where(Instance.study_id == study.study_id)).first()
    session.add(StoredObject(facility_id=cold.facility_id, study_id=study.study_id, instance_id=cold.id,
                             kind="instance", object_key=cold.object_key, size=cold.size,
                             sha256=cold.sha256, storage_class="DEEP_ARCHIVE", state="kept",
                             stored_at=utcnow() - timedelta(days=400)))
    session.commit()
    outcome = preparation.prepare_case(session, store, case_id, secret=SECRET, uid_root="2.25",
                                       checkpoint=session.commit)
    case = session.get(TeachingCase, case_id)
    assert outcome.waiting == 1 and case.preparation == Preparation.WAITING_RESTORE
    assert "cold storage tier" in case.preparation_note and "expected by" in case.preparation_note
    request = session.scalar(select(RestoreRequest))
    assert request.instance_id == cold.id and request.purpose == "read"
    assert session.scalar(select(func.count()).select_from(TeachingInstance)) == 0

    # The restore finished: the bytes are readable for a while; the resumed job fills the case.
    row = session.scalar(select(StoredObject))
    row.restored_until = utcnow() + timedelta(days=2)
    session.commit()
    outcome = preparation.prepare_case(session, store, case_id, secret=SECRET, uid_root="2.25",
                                       checkpoint=session.commit)
    assert outcome.copied == 4 and session.get(TeachingCase, case_id).preparation == Preparation.READY


def test_only_delivered_studies_become_cases(session, app):
    store = app.extensions["relaypacs"].store
    author = teaching_seed.user(session, "Clinic Q", "teaching_publisher")
    study = teaching_seed.delivered_study(session, store, facility_id=author.facility_id,
                                          user_id=author.id, ct_count=1)
    from pipeline.models import Delivery

    for delivery in session.scalars(select(Delivery).where(Delivery.study_id == study.study_id)):
        delivery.state = "pending"
    session.commit()
    with pytest.raises(cases.CaseError) as refused:
        cases.add_from_study(session, session.get(cases.User, author.id), study.study_id, {"title": "t"},
                             DeidOptions())
    assert refused.value.status == 409


def test_the_periodic_resume_leaves_a_moving_copy_alone(session, setup):
    _, _, case_id, _ = setup
    case = session.get(TeachingCase, case_id)
    now = utcnow()
    assert preparation.cases_to_resume(session, now) == []  # queued a moment ago: its task runs
    assert preparation.cases_to_resume(session, now + timedelta(hours=1)) == [case_id]  # task lost
    case.preparation = Preparation.WAITING_RESTORE
    session.commit()
    assert preparation.cases_to_resume(session, now) == [case_id]
    case.preparation = Preparation.READY
    session.commit()
    assert preparation.cases_to_resume(session, now + timedelta(hours=1)) == []
