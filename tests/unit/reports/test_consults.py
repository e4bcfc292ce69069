"""The consult state machine: legal moves, illegal ones, who may make them, due times."""

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.reports import consults
from pipeline.reports.consults import (
    ActorView,
    ConsultAction,
    ConsultState,
    ConsultView,
    IllegalTransition,
    NotAllowed,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_a_consult_runs_its_states():
    state = ConsultState.REQUESTED
    for action, expected in [("accept", "accepted"), ("start", "in-progress"), ("complete", "completed")]:
        state = consults.next_state(state, action)
        assert state == expected


@pytest.mark.parametrize("state", ["declined", "completed", "cancelled"])
@pytest.mark.parametrize("action", [a.value for a in ConsultAction])
def test_nothing_moves_a_finished_consult(state, action):
    with pytest.raises(IllegalTransition):
        consults.next_state(state, action)


@pytest.mark.parametrize(("state", "action"), [
    ("requested", "start"), ("requested", "complete"), ("accepted", "accept"),
    ("in-progress", "accept"), ("in-progress", "decline"), ("requested", "fly"), ("nowhere", "accept"),
])
def test_illegal_moves_raise(state, action):
    with pytest.raises(IllegalTransition, match="cannot"):
        consults.next_state(state, action)


def test_overdue_consults_go_back_to_the_pool_from_any_open_state():
    for state in ("requested", "accepted", "in-progress"):
        assert consults.next_state(state, "reoffer") == ConsultState.REQUESTED
    view = ConsultView("accepted", requester_id=1, consultant_id=7, subspecialty="neuro")
    assert consults.owner_after(view, "reoffer", None) is None


def test_legal_actions_for_pages():
    assert consults.legal_actions("requested") == ["accept", "decline", "cancel"]
    assert consults.legal_actions("completed") == []


def _actor(user_id, roles=("consultant",), subs=()):
    return ActorView(user_id, frozenset(roles), frozenset(subs))


def test_a_named_consult_is_only_its_consultants():
    view = ConsultView("requested", requester_id=1, consultant_id=7, subspecialty=None)
    consults.check_actor(view, "accept", _actor(7))
    with pytest.raises(NotAllowed):
        consults.check_actor(view, "accept", _actor(8))
    with pytest.raises(NotAllowed):
        consults.check_actor(view, "accept", _actor(7, roles=("clinician",)))


def test_pool_consults_need_the_subspecialty_and_acceptance():
    view = ConsultView("requested", requester_id=1, consultant_id=None, subspecialty="neuro")
    consults.check_actor(view, "accept", _actor(9, subs=("neuro",)))
    with pytest.raises(NotAllowed, match="neuro"):
        consults.check_actor(view, "accept", _actor(9, subs=("chest",)))
    with pytest.raises(NotAllowed):
        consults.check_actor(view, "complete", _actor(9, subs=("neuro",)))
    assert consults.owner_after(view, "accept", 9) == 9


def test_cancel_is_the_requesters_or_an_admins_and_reoffer_nobodys():
    view = ConsultView("requested", requester_id=1, consultant_id=7, subspecialty=None)
    consults.check_actor(view, "cancel", _actor(1, roles=("clinician",)))
    consults.check_actor(view, "cancel", _actor(2, roles=("admin",)))
    with pytest.raises(NotAllowed):
        consults.check_actor(view, "cancel", _actor(7))
    with pytest.raises(NotAllowed):
        consults.check_actor(view, "reoffer", _actor(2, roles=("admin",)))


def test_reminders_once_per_due_time_and_overdue():
    due = NOW + timedelta(hours=1)
    assert consults.reminder_due("accepted", due, None, NOW)
    assert not consults.reminder_due("accepted", due, NOW, NOW + timedelta(minutes=5))
    assert not consults.reminder_due("accepted", NOW + timedelta(hours=5), None, NOW)
    assert not consults.reminder_due("completed", due, None, NOW)
    # A reoffer gives a new due time, and with it a new reminder.
    assert consults.reminder_due("requested", NOW + timedelta(hours=25), NOW,
                                 NOW + timedelta(hours=24))
    assert consults.overdue("in-progress", NOW, NOW + timedelta(seconds=1))
    assert not consults.overdue("in-progress", NOW, NOW)
    assert not consults.overdue("declined", NOW, NOW + timedelta(days=1))
