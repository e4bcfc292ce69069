"""Ended sessions and spent reset links leave their tables 30 days after they ended; live
ones and recently ended ones stay; the daily job is in beat_schedule.py on a routed queue."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from beat_schedule import BEAT_SCHEDULE
from config.celery import TASK_ROUTES
from pipeline.accounts import retention
from pipeline.accounts.users import create_user
from pipeline.models import PasswordReset, UserSession, utcnow


def test_only_what_ended_before_the_retention_goes(session):
    user, _ = create_user(session, "r@north.test", "North", "uploader")
    now = utcnow()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)

    def add_session(tag: str, **times) -> None:
        values = {"created_at": now - timedelta(days=40), "last_seen_at": now,
                  "expires_at": now + timedelta(hours=1)} | times
        session.add(UserSession(id_hash=tag.ljust(64, "0"), user_id=user.id, csrf_token=tag, **values))

    add_session("live")
    add_session("revoked-old", revoked_at=old, revoked_reason="logout")
    add_session("revoked-recent", revoked_at=recent, revoked_reason="logout")
    add_session("expired-old", expires_at=old)
    add_session("idle-old", last_seen_at=old, expires_at=now + timedelta(days=1))
    links = {"unused-open": {"expires_at": now + timedelta(hours=1)},
             "expired-old": {"expires_at": old},
             "used-old": {"expires_at": now + timedelta(hours=1), "used_at": old},
             "used-recent": {"expires_at": recent + timedelta(hours=1), "used_at": recent}}
    for tag, values in links.items():
        session.add(PasswordReset(user_id=user.id, token_hash=tag.ljust(64, "0"), **values))
    session.commit()

    before = retention.cutoff(now)
    assert retention.prune_sessions_chunk(session, before=before, chunk=2) == 2  # bounded
    assert retention.prune_sessions_chunk(session, before=before) == 1
    assert retention.prune_resets_chunk(session, before=before) == 2
    session.commit()
    assert sorted(session.scalars(select(UserSession.csrf_token))) == ["live", "revoked-recent"]
    assert sorted(h.rstrip("0") for h in session.scalars(select(PasswordReset.token_hash))) == [
        "unused-open", "used-recent"]


def test_the_daily_job_is_scheduled_on_a_routed_queue():
    entry = next(e for e in BEAT_SCHEDULE.values() if e["task"] == "accounts.prune_sign_ins")
    assert entry["options"]["expires"] > 0
    assert TASK_ROUTES["accounts.*"] == {"queue": "intake"}
