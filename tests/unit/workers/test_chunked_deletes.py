"""The housekeeping tasks' bounded deletes: one transaction per chunk, until a chunk comes back
short or the run's limit is reached (workers.runtime.delete_in_chunks)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.accounts.users import create_user
from pipeline.models import UserSession, utcnow
from workers import accounts, runtime


@pytest.fixture
def worker_runtime(settings, configure_runtime):
    return configure_runtime(settings)


def test_chunks_until_a_short_one_or_the_limit(worker_runtime):
    calls: list[int] = []
    left = [25]

    def prune(session, *, chunk: int, tag: str) -> int:  # noqa: ANN001
        assert tag == "x" and session.is_active
        calls.append(chunk)
        count = min(chunk, left[0])
        left[0] -= count
        return count

    assert runtime.delete_in_chunks(prune, limit=100, chunk=10, tag="x") == 25
    assert calls == [10, 10, 10]  # the third came back short (5): done
    left[0], calls[:] = 100, []
    assert runtime.delete_in_chunks(prune, limit=25, chunk=10, tag="x") == 25
    assert calls == [10, 10, 5]  # never past the limit


def test_the_sign_in_task_deletes_what_ended_long_ago(worker_runtime):
    now = utcnow()
    with runtime.session_scope() as session:
        user, _ = create_user(session, "t@north.test", "North", "uploader")
        for tag, seen in (("old", now - timedelta(days=40)), ("live", now)):
            session.add(UserSession(id_hash=tag.ljust(64, "0"), user_id=user.id, csrf_token=tag,
                                    created_at=seen, last_seen_at=seen, expires_at=now + timedelta(hours=1)))
    assert accounts.prune_sign_ins() == {"sessions": 1, "password_resets": 0}
    with runtime.session_scope() as session:
        assert [s.csrf_token for s in session.query(UserSession)] == ["live"]
