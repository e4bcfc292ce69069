"""The report poll's logic against a stand-in DICOMweb reader (the real Orthanc is in the
integration test): new SR documents become reports, an amending SR supersedes and amends its
predecessor, the gateway's own addenda are skipped, studies are asked less often as they age
and not after POLL_DAYS, and a destination that does not answer is backed off, shown as
unreachable, and back to ok when it answers."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from pipeline.accounts.users import create_user
from pipeline.models import RadiologyReport, ReportPollState, StudyReportCheck, utcnow
from pipeline.reports import new_addendum_uid, poll
from pipeline.reports.dicomweb import DestinationUnavailable
from pipeline.storage import open_store
from tests.report_samples import basic_text_sr, series_uid_of
from tests.report_seed import delivered_studies, destination


class StandInPacs:
    """Holds Part-10 documents per study; ``down`` makes every call fail like a dead PACS."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, bytes]] = {}
        self.down = False
        self.asked: list[str] = []
        self.alone: list[str] = []  # asked with a query of their own
        self.batches: list[list[str]] = []
        self.left_out: set[str] = set()  # studies a batched answer does not mention

    def add(self, study_uid: str, sop_uid: str, data: bytes) -> None:
        self.docs.setdefault(study_uid, {})[sop_uid] = data

    def _check(self) -> None:
        if self.down:
            raise DestinationUnavailable("no answer: ConnectionError")

    def _has(self, study_uid: str) -> bool:
        self._check()
        self.asked.append(study_uid)
        return bool(self.docs.get(study_uid))

    def study_has_reports(self, study_uid: str) -> bool:
        self.alone.append(study_uid)
        return self._has(study_uid)

    def studies_with_reports(self, study_uids: list[str]) -> dict[str, bool | None]:
        self.batches.append(list(study_uids))
        return {uid: self._has(uid) for uid in study_uids if uid not in self.left_out}

    def report_instances(self, study_uid: str) -> list[dict]:
        self._check()
        return [{"00080018": {"Value": [sop]}, "0020000E": {"Value": [series_uid_of(data)]}}
                for sop, data in self.docs.get(study_uid, {}).items()]

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        self._check()
        return self.docs[study_uid][sop_uid]

    def close(self) -> None:
        pass


def _world(session, tmp_path, age=timedelta(hours=1)):
    uploader, _ = create_user(session, "u@north.test", "North", "uploader")
    dest = destination(session, "pacs-a")
    studies = delivered_studies(session, uploader.facility_id, uploader.id, dest.id, 3,
                                delivered_at=utcnow() - age)
    session.commit()
    return dest, studies, open_store(f"file://{tmp_path / 'objects'}")


def test_documents_become_reports_amendments_supersede_addenda_are_skipped(session, tmp_path):
    dest, studies, store = _world(session, tmp_path)
    pacs = StandInPacs()
    first_uid, first = basic_text_sr(studies[0].study_instance_uid, "No acute abnormality.")
    pacs.add(studies[0].study_instance_uid, first_uid, first)
    own_uid = new_addendum_uid()
    _, own = basic_text_sr(studies[0].study_instance_uid, "Addendum.", sop_uid=own_uid)
    pacs.add(studies[0].study_instance_uid, own_uid, own)
    now = utcnow()
    result = poll.poll_destination(session, store, dest, lambda d: pacs, now)
    session.commit()
    assert (result.state, result.studies_checked, result.documents_read) == ("ok", 3, 1)
    (report,) = session.scalars(select(RadiologyReport)).all()
    assert report.status == "final" and report.study_id == studies[0].id and "No acute" in report.text
    assert store.open(report.object_key).read() == first  # the original, byte for byte
    assert [json["to"] for json in (e.data for e in result.events)] == ["final"]

    # Nothing new is read twice; a later amending SR supersedes and amends the first.
    series = series_uid_of(first)
    second_uid, second = basic_text_sr(studies[0].study_instance_uid, "Small effusion.",
                                       amends=(studies[0].study_instance_uid, series, first_uid))
    pacs.add(studies[0].study_instance_uid, second_uid, second)
    later = now + timedelta(minutes=11)
    result = poll.poll_destination(session, store, dest, lambda d: pacs, later)
    session.commit()
    assert result.documents_read == 1
    session.expire_all()
    old, new = session.scalars(select(RadiologyReport).order_by(RadiologyReport.id)).all()
    assert (old.status, old.superseded_by_id) == ("amended", new.id)
    assert (new.status, new.predecessor_id) == ("amended", old.id)
    assert sorted((e.data["report_id"], e.data["from"], e.data["to"]) for e in result.events) == [
        (old.id, "final", "amended"), (new.id, None, "amended")]
    assert own_uid not in {r.sop_instance_uid for r in (old, new)}


def test_schedule_thins_out_with_age_and_stops():
    delivered = utcnow()
    assert poll.next_check_at(delivered, delivered + timedelta(hours=2)) == delivered + timedelta(hours=2,
                                                                                                  minutes=10)
    assert poll.next_check_at(delivered, delivered + timedelta(days=2)) == delivered + timedelta(days=2,
                                                                                                 hours=1)
    assert poll.next_check_at(delivered, delivered + timedelta(days=5)) == delivered + timedelta(days=5,
                                                                                                 hours=6)
    assert poll.next_check_at(delivered, delivered + timedelta(days=20)) == delivered + timedelta(days=21)
    assert poll.next_check_at(delivered, delivered + timedelta(days=31)) is None


def test_only_due_studies_are_asked_and_old_deliveries_never(session, tmp_path):
    dest, studies, store = _world(session, tmp_path)
    pacs = StandInPacs()
    now = utcnow()
    poll.poll_destination(session, store, dest, lambda d: pacs, now)
    assert len(pacs.asked) == 3
    pacs.asked.clear()
    poll.poll_destination(session, store, dest, lambda d: pacs, now + timedelta(minutes=5))
    assert pacs.asked == []  # not due for 10 minutes
    poll.poll_destination(session, store, dest, lambda d: pacs, now + timedelta(minutes=10))
    assert len(pacs.asked) == 3
    checks = session.scalars(select(StudyReportCheck)).all()
    assert {c.study_id for c in checks} == {s.id for s in studies}


def test_unanswering_destination_backs_off_and_shows_unreachable(session, tmp_path, app):
    dest, _, store = _world(session, tmp_path)
    pacs = StandInPacs()
    pacs.down = True
    now = utcnow()
    first = poll.poll_destination(session, store, dest, lambda d: pacs, now)
    state = session.get(ReportPollState, dest.id)
    assert first.state == "unreachable" and state.consecutive_failures == 1
    assert state.next_poll_at == now + poll.BACKOFF_BASE and "ConnectionError" in state.last_error
    # Not retried hot: inside the backoff the round is skipped without asking.
    assert poll.poll_destination(session, store, dest, lambda d: pacs, now + timedelta(seconds=30)).skipped
    poll.poll_destination(session, store, dest, lambda d: pacs, now + timedelta(seconds=61))
    assert state.consecutive_failures == 2 and state.next_poll_at == now + timedelta(seconds=61 + 120)
    session.commit()
    admin, token = create_user(session, "admin@north.test", "North", "admin")
    session.commit()
    shown = app.test_client().get("/api/v1/reports/pacs", headers={"Authorization": f"Bearer {token}"})
    assert shown.get_json()["destinations"][0]["state"] == "unreachable"
    pacs.down = False
    back = poll.poll_destination(session, store, dest, lambda d: pacs, now + timedelta(minutes=10))
    assert back.state == "ok" and state.consecutive_failures == 0 and state.next_poll_at is None
    assert back.studies_checked == 3


def test_studies_are_asked_in_batches_and_one_left_out_is_asked_alone(session, tmp_path):
    dest, studies, store = _world(session, tmp_path)
    pacs = StandInPacs()
    uids = [s.study_instance_uid for s in studies]
    sop_uid, data = basic_text_sr(uids[2], "Consolidation.")
    pacs.add(uids[2], sop_uid, data)
    pacs.left_out = {uids[1]}  # e.g. a PACS that no longer holds it, or a truncated answer
    result = poll.poll_destination(session, store, dest, lambda d: pacs, utcnow())
    session.commit()
    assert [sorted(b) for b in pacs.batches] == [sorted(uids)]  # one query for the three
    assert pacs.alone == [uids[1]]  # only the one the batch did not answer for
    assert (result.studies_checked, result.documents_read) == (3, 1)
    assert session.scalar(select(RadiologyReport.study_id)) == studies[2].id
