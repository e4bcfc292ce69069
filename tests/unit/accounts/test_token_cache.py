"""The per-process token cache: no database round trip on a hit, expiry checked on every
hit, revocation honoured at once in-process and within the TTL elsewhere."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, update

from pipeline.accounts import users as accounts
from pipeline.models import User, utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _statements(session) -> list[str]:  # noqa: ANN001
    seen: list[str] = []
    event.listen(session.get_bind(), "before_cursor_execute",
                 lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


def test_a_hit_costs_no_query_and_gives_a_usable_user(session):
    _, token = accounts.create_user(session, "cache@a.test", "Clinic A", "qa_manager")
    session.commit()
    cache = accounts.TokenCache(ttl_seconds=5, clock=Clock())
    first = cache.user(session, token)
    session.close()
    seen = _statements(session)
    again = cache.user(session, token)
    assert again is not None and again.id == first.id and again.role == "qa_manager"
    assert again.facility_id == first.facility_id and again in session
    assert seen == []
    assert cache.user(session, "rp_not-a-token") is None


def test_revocation_elsewhere_is_honoured_after_the_ttl(session):
    user, token = accounts.create_user(session, "elsewhere@a.test", "Clinic A", "uploader")
    session.commit()
    clock = Clock()
    cache = accounts.TokenCache(ttl_seconds=5, clock=clock)
    assert cache.user(session, token) is not None
    # Another process revokes: a plain UPDATE this process's cache knows nothing about.
    session.execute(update(User).where(User.id == user.id).values(revoked_at=utcnow()))
    session.commit()
    clock.now += 4.9
    assert cache.user(session, token) is not None  # inside the TTL: still the cached answer
    clock.now += 0.2
    assert cache.user(session, token) is None


def test_revoke_and_rotate_in_process_and_expiry_apply_at_once(session):
    _, token = accounts.create_user(session, "now@a.test", "Clinic A", "uploader")
    _, short = accounts.create_user(session, "short@a.test", "Clinic A", "uploader",
                                    expires_in=timedelta(seconds=1))
    session.commit()
    cache = accounts.TokenCache(ttl_seconds=300, clock=Clock())
    assert cache.user(session, token) is not None and cache.user(session, short) is not None
    accounts.revoke(session, "now@a.test")
    session.commit()
    assert cache.user(session, token) is None
    _, fresh = accounts.rotate_token(session, "now@a.test")
    session.commit()
    assert cache.user(session, fresh) is not None and cache.user(session, token) is None
    session.execute(update(User).where(User.email == "short@a.test")
                    .values(token_expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    session.expire_all()
    # The cached copy still holds the old expiry; a real expiry in the past is refused on a hit.
    cache2 = accounts.TokenCache(ttl_seconds=300, clock=Clock())
    assert cache2.user(session, short) is None


def test_a_callers_hit_asks_for_no_session_and_honours_revocation_like_the_user(session):
    user, token = accounts.create_user(session, "caller@a.test", "Clinic A", ["uploader", "qa_manager"])
    session.commit()
    clock = Clock()
    cache = accounts.TokenCache(ttl_seconds=5, clock=clock)
    asked = []

    def sessions():  # noqa: ANN202
        asked.append(1)
        return session

    first = cache.caller(token, sessions)
    assert first == accounts.Caller(user.id, user.facility_id, "qa_manager",
                                    frozenset({"uploader", "qa_manager"}))
    assert first.has_role("uploader") and not first.is_admin and len(asked) == 1
    seen = _statements(session)
    assert cache.caller(token, sessions) is first and len(asked) == 1 and seen == []
    # The same entry gives the ORM user to a route that needs one, without a query.
    orm_user = cache.user(session, token)
    assert orm_user.id == user.id and orm_user in session and seen == []
    # Revoked by another process: the cached answer holds inside the TTL, not after it.
    session.execute(update(User).where(User.id == user.id).values(revoked_at=utcnow()))
    session.commit()
    clock.now += 4.9
    assert cache.caller(token, sessions) is first
    clock.now += 0.2
    assert cache.caller(token, sessions) is None and len(asked) == 2
    # Revoked in this process: at once, whatever the TTL.
    _, other = accounts.create_user(session, "caller2@a.test", "Clinic A", "uploader")
    session.commit()
    long_cache = accounts.TokenCache(ttl_seconds=300, clock=Clock())
    assert long_cache.caller(other, sessions) is not None
    accounts.disable_user(session, "caller2@a.test")
    session.commit()
    assert long_cache.caller(other, sessions) is None
