"""Per-app resources and per-request accessors (session, current user)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker

from api.limits import RateLimiter
from config import Settings
from pipeline.storage import ObjectStore


@dataclass
class Resources:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: ObjectStore
    limiter: RateLimiter


def resources() -> Resources:
    return current_app.extensions["relaypacs"]


def db() -> Session:
    if "session" not in g:
        g.session = resources().session_factory()
    return g.session
