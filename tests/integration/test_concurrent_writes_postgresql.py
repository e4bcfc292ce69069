"""Concurrent writers on a real PostgreSQL: two threads, two sessions, the interleavings that
used to lose a write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.accounts.users import create_user, user_for_token
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.db.migrate import upgrade_database
from pipeline.editing import batch_edits
from pipeline.models import Batch, MetadataChange, User
from tests.integration.services import create_database, database_url, drop_database, ensure_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sessions() -> Iterator[sessionmaker[Session]]:
    ensure_postgres()
    name = create_database("relaypacs_race_")
    url = database_url(name)
    upgrade_database(url)
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()
        drop_database(name)


@pytest.fixture
def batch_and_user(sessions) -> tuple[int, int]:
    with sessions() as session:
        _, token = create_user(session, f"editor-{time.time_ns()}@race.test", "Race Clinic", "uploader")
        user = user_for_token(session, token)
        batch = Batch(facility_id=user.facility_id, user_id=user.id,
                      overrides={"P1": {"PatientName": "Old^Name"}})
        session.add(batch)
        session.commit()
        return batch.id, user.id


def test_two_concurrent_overrides_on_one_batch_both_stay(sessions, batch_and_user):
    """Each request reads the batch, merges its change and writes the whole JSON back: the
    first holds its transaction open a moment (as a slow request does) while the second runs."""
    batch_id, user_id = batch_and_user
    loaded = threading.Barrier(2)
    errors: list[BaseException] = []

    def edit(patient_id: str, changes: dict, hold: float) -> None:
        try:
            with sessions() as session:
                batch = session.get(Batch, batch_id)  # what the view loads first
                user = session.get(User, user_id)
                loaded.wait(10)
                if not hold:
                    time.sleep(0.2)  # the first one writes first
                batch_edits.set_override(session, batch, user, patient_id, changes)
                time.sleep(hold)
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    first = threading.Thread(target=edit, args=("P1", {"PatientID": "NEW-1"}, 1.0))
    second = threading.Thread(target=edit, args=("P2", {"PatientName": "Second^Patient"}, 0.0))
    first.start()
    second.start()
    first.join(30)
    second.join(30)
    assert not errors, errors

    with sessions() as session:
        overrides = session.get(Batch, batch_id).overrides
        logged = session.query(MetadataChange).filter_by(batch_id=batch_id, kind="override").count()
    assert logged == 2
    assert overrides == {"P1": {"PatientName": "Old^Name", "PatientID": "NEW-1"},
                         "P2": {"PatientName": "Second^Patient"}}
