"""Unit tests: no broker, no server. The API runs on a SQLite file and a folder store;
enqueued tasks go to Celery's in-memory transport (set in tests/conftest.py before anything
imports workers.app) and are inspected, not run."""

from __future__ import annotations

import os

import pytest

from config import load_settings


@pytest.fixture(scope="session", autouse=True)
def _yield_the_cpu_to_integration_tests(request: pytest.FixtureRequest) -> None:
    """Under ``make test`` (xdist, one worker per folder: tests/conftest.py) this worker runs
    only unit tests, beside the worker whose integration tests time real servers: it runs at
    a lower CPU priority, so it fills the idle core without slowing those servers down."""
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getoption("by_folder"):
        os.nice(10)


@pytest.fixture
def settings(tmp_path):
    return load_settings({
        "RELAYPACS_VAR_DIR": str(tmp_path),
        "RELAYPACS_BROKER_URL": "memory://",
        "RELAYPACS_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
    })


@pytest.fixture
def app(settings):
    from api import create_app
    from pipeline.db.migrate import upgrade_database

    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture
def session(app):
    session = app.extensions["relaypacs"].session_factory()
    yield session
    session.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def enqueued(monkeypatch, app):
    """Record what the API enqueues instead of publishing it. An upload's chain is started by
    its committed upload.completed event (the relay, inline here, calls chains.after_events):
    recorded as the step intake.start_uploads would enqueue for it."""
    calls: list[tuple[str, object]] = []
    from tests.started_chains import record_started_uploads
    from workers import chains

    record_started_uploads(monkeypatch, app, calls)
    monkeypatch.setattr(chains, "enqueue_upload_chain", lambda uid: calls.append(("upload", uid)))
    monkeypatch.setattr(chains, "enqueue_parse", lambda uid: calls.append(("parse", uid)))
    monkeypatch.setattr(chains, "enqueue_batch_dispatch", lambda bid: calls.append(("batch", bid)))
    monkeypatch.setattr(chains, "enqueue_restores", lambda: calls.append(("restores", None)))
    return calls


@pytest.fixture
def make_token(session):
    from pipeline.accounts.users import create_user

    counter = iter(range(10_000))

    def make(facility: str = "Clinic A", role: str = "uploader") -> str:
        _, token = create_user(session, f"user{next(counter)}@{facility}.test", facility, role)
        session.commit()
        return token

    return make


TEST_PASSWORD = "correct horse battery"  # noqa: S105 - a test fixture's password


@pytest.fixture
def sign_in(app):
    """``sign_in(client, token)``: give the token's user a password and sign in through the
    form at /login, as a person does; returns the response (302 when signed in)."""
    from pipeline.accounts import passwords
    from pipeline.accounts.users import user_for_token

    def run(client, token: str, *, password: str = TEST_PASSWORD, next: str | None = None,  # noqa: A002
            **client_kwargs):  # noqa: ANN001, ANN003
        session = app.extensions["relaypacs"].session_factory()
        try:
            user = user_for_token(session, token)
            assert user is not None, "sign_in needs a valid token"
            if user.password_hash is None:
                user.password_hash = passwords.hash_password(TEST_PASSWORD)
                session.commit()
            email = user.email
        finally:
            session.close()
        form = {"email": email, "password": password, **({"next": next} if next else {})}
        return client.post("/login", data=form, **client_kwargs)

    return run
