"""The write lease during a chunk's PUT: renewed every RENEW_EVERY_SECONDS counted from its
last renewal, so a small file's PATCH (lease just taken) pays no renewal transaction, and a
long PUT or a lease that aged while the body arrived is still renewed in time."""

from __future__ import annotations

import time

from pipeline.intake import uploads


def test_a_fresh_lease_is_not_renewed_before_a_short_put():
    renewals: list[float] = []
    done: list[bool] = []
    uploads._while_renewing(lambda: renewals.append(time.monotonic()), lambda: done.append(True),
                            renewed_at=time.monotonic())
    assert done == [True] and renewals == []


def test_an_aged_lease_is_renewed_before_the_put(monkeypatch):
    monkeypatch.setattr(uploads, "RENEW_EVERY_SECONDS", 0.2)
    order: list[str] = []
    uploads._while_renewing(lambda: order.append("renew"), lambda: order.append("put"),
                            renewed_at=time.monotonic() - 0.3)
    assert order == ["renew", "put"]


def test_a_long_put_is_renewed_when_the_interval_since_the_last_renewal_is_up(monkeypatch):
    monkeypatch.setattr(uploads, "RENEW_EVERY_SECONDS", 0.4)
    renewals: list[float] = []
    started = time.monotonic()
    uploads._while_renewing(lambda: renewals.append(time.monotonic() - started),
                            lambda: time.sleep(1.0), renewed_at=started - 0.2)
    # The first renewal 0.2 s in (0.4 s after the last one, not 0.4 s after the PUT began),
    # then every 0.4 s while the PUT lasts.
    assert len(renewals) >= 2, renewals
    assert 0.15 <= renewals[0] < 0.38 and renewals[1] - renewals[0] >= 0.35, renewals


def test_without_a_known_renewal_time_the_lease_is_renewed_first():
    order: list[str] = []
    uploads._while_renewing(lambda: order.append("renew"), lambda: order.append("put"))
    assert order == ["renew", "put"]
