"""The consult workflow as a state machine: which move is legal from which state, who may
make it, and when a consult is due a reminder or goes back to the pool.

States follow FHIR Task (``requested``, ``accepted``, ``in-progress``, ``completed``,
``cancelled``; FHIR's ``rejected`` is called ``declined`` here, as the people using it say).
A consult is asked of a named consultant or of a subspecialty pool; the consultant who
accepts a pool consult becomes its owner. One move has no person behind it: past its due
time, an unfinished consult is offered to the pool again (``reoffer``), which clears the
owner and starts a new due time. Pure logic over plain values: the rows and the audit are
the caller's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class ConsultState(enum.StrEnum):
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ConsultAction(enum.StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    START = "start"
    COMPLETE = "complete"
    CANCEL = "cancel"
    REOFFER = "reoffer"  # overdue: back to the pool (the beat job, never a person)


TERMINAL = frozenset({ConsultState.DECLINED, ConsultState.COMPLETED, ConsultState.CANCELLED})

# (from, action) -> to. Anything not listed is illegal (409 at the API).
_MOVES: dict[tuple[ConsultState, ConsultAction], ConsultState] = {
    (ConsultState.REQUESTED, ConsultAction.ACCEPT): ConsultState.ACCEPTED,
    (ConsultState.REQUESTED, ConsultAction.DECLINE): ConsultState.DECLINED,
    (ConsultState.REQUESTED, ConsultAction.CANCEL): ConsultState.CANCELLED,
    (ConsultState.REQUESTED, ConsultAction.REOFFER): ConsultState.REQUESTED,
    (ConsultState.ACCEPTED, ConsultAction.START): ConsultState.IN_PROGRESS,
    # Answering at once (the addendum written right after accepting) needs no separate start.
    (ConsultState.ACCEPTED, ConsultAction.COMPLETE): ConsultState.COMPLETED,
    (ConsultState.ACCEPTED, ConsultAction.CANCEL): ConsultState.CANCELLED,
    (ConsultState.ACCEPTED, ConsultAction.REOFFER): ConsultState.REQUESTED,
    (ConsultState.IN_PROGRESS, ConsultAction.COMPLETE): ConsultState.COMPLETED,
    (ConsultState.IN_PROGRESS, ConsultAction.CANCEL): ConsultState.CANCELLED,
    (ConsultState.IN_PROGRESS, ConsultAction.REOFFER): ConsultState.REQUESTED,
}

# The consultant's moves; cancelling is the requester's (or an admin's).
CONSULTANT_ACTIONS = frozenset({ConsultAction.ACCEPT, ConsultAction.DECLINE, ConsultAction.START,
                                ConsultAction.COMPLETE})


class IllegalTransition(ValueError):
    """The move is not allowed from the consult's state (answered 409)."""

    def __init__(self, state: str, action: str) -> None:
        super().__init__(f"a consult that is {state} cannot {action}")
        self.state = state
        self.action = action


class NotAllowed(PermissionError):
    """This person may not make this move on this consult (answered 403)."""


def next_state(state: str, action: str) -> ConsultState:
    """The state after ``action``; ``IllegalTransition`` when the move does not exist."""
    try:
        key = (ConsultState(state), ConsultAction(action))
    except ValueError as exc:
        raise IllegalTransition(state, action) from exc
    if key not in _MOVES:
        raise IllegalTransition(state, action)
    return _MOVES[key]


def legal_actions(state: str) -> list[str]:
    """What a page may offer for a consult in ``state`` (reoffer excluded: beat's alone)."""
    return [a.value for (s, a) in _MOVES if s == state and a != ConsultAction.REOFFER]


@dataclass(frozen=True)
class ConsultView:
    """What the permission check needs to know about a consult."""

    state: str
    requester_id: int
    consultant_id: int | None  # None: in the pool
    subspecialty: str | None


@dataclass(frozen=True)
class ActorView:
    """What the permission check needs to know about the person acting."""

    user_id: int
    roles: frozenset[str]
    subspecialties: frozenset[str]  # served for this report's facility


def check_actor(consult: ConsultView, action: str, actor: ActorView) -> None:
    """Raise ``NotAllowed`` unless ``actor`` may make ``action`` (legality is ``next_state``'s).

    A named consultant answers their own consults; a pool consult may be accepted or declined
    by any consultant or radiologist serving that subspecialty for the report's facility, and
    once accepted it is its owner's. The requester and admins cancel."""
    if action == ConsultAction.REOFFER:
        raise NotAllowed("a consult goes back to the pool when it is overdue, not on request")
    if action == ConsultAction.CANCEL:
        if actor.user_id == consult.requester_id or "admin" in actor.roles:
            return
        raise NotAllowed("only the requester or an admin cancels a consult")
    if not actor.roles & {"consultant", "radiologist"}:
        raise NotAllowed("answering a consult needs the consultant or radiologist role")
    if consult.consultant_id is not None:
        if consult.consultant_id != actor.user_id:
            raise NotAllowed("this consult is another consultant's")
        return
    if action not in (ConsultAction.ACCEPT, ConsultAction.DECLINE):
        raise NotAllowed("a pool consult is accepted before it is worked on")
    if consult.subspecialty is not None and consult.subspecialty not in actor.subspecialties:
        raise NotAllowed(f"this consult is for the {consult.subspecialty} pool")


def owner_after(consult: ConsultView, action: str, actor_id: int | None) -> int | None:
    """Who owns the consult after the move: the accepting consultant takes a pool consult;
    a reoffer gives it back to the pool; a pool consult declined by one consultant stays
    declined (the requester asks again, possibly someone else)."""
    if action == ConsultAction.ACCEPT and consult.consultant_id is None:
        return actor_id
    if action == ConsultAction.REOFFER:
        return None
    return consult.consultant_id


# Defaults the settings may override.
DEFAULT_DUE = timedelta(hours=24)
REMIND_BEFORE = timedelta(hours=2)
POOL_WINDOW = timedelta(hours=24)


def reminder_due(state: str, due_at: datetime, reminded_at: datetime | None, now: datetime,
                 remind_before: timedelta = REMIND_BEFORE) -> bool:
    """Remind once per due time, from ``remind_before`` ahead of it, while it is still open."""
    if ConsultState(state) in TERMINAL:
        return False
    if reminded_at is not None and reminded_at >= due_at - remind_before:
        return False
    return now >= due_at - remind_before


def overdue(state: str, due_at: datetime, now: datetime) -> bool:
    """Past its due time and unfinished: the consult goes back to the pool."""
    return ConsultState(state) not in TERMINAL and now > due_at
