"""Destination passwords at rest, on the real stack: a STOW-RS destination behind HTTP basic
auth (Orthanc with AuthenticationEnabled) gets a batch through real workers while its stored
row holds no plaintext password; an older release's plaintext row in PostgreSQL is encrypted by
``relaypacs db upgrade`` (which refuses without RELAYPACS_SECRET_KEY), and ``relaypacs
destinations rotate-key`` moves it to a new key that alone opens it afterwards."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import create_engine, text

from pipeline.db.migrate import SCRIPT_LOCATION
from tests.integration.gateway_client import Gateway
from tests.integration.services import (
    Orthanc,
    create_database,
    database_url,
    drop_database,
    relaypacs_argv,
    run_cli,
)
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

PACS_USER = "relay"
PACS_PASSWORD = "orthanc-basic-auth-pw-7"  # noqa: S105 - the test PACS's account


def _raw_destination(engine, name: str) -> tuple[str, str | None]:
    with engine.connect() as conn:
        return tuple(conn.execute(
            text("SELECT CAST(options AS TEXT), sealed_secrets FROM destinations WHERE name = :n"),
            {"n": name}).one())


@pytest.fixture
def auth_pacs(it_dir):
    pacs = Orthanc(it_dir / "orthanc-secrets", aet="SECRETPACS", extra_config={
        "AuthenticationEnabled": True, "RegisteredUsers": {PACS_USER: PACS_PASSWORD}})
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()


def test_a_sealed_password_still_authenticates_the_sender(
    auth_pacs, gateway_env, postgres_url, api_server, worker, make_user,
):
    facility = "Secrets Clinic"
    # Orthanc answers 401 without the account: the delivery below needs the password.
    assert requests.get(f"{auth_pacs.http_url}/statistics", timeout=10).status_code == 401
    run_cli(["destinations", "add", "sealed-pacs", "--stow-url", auth_pacs.dicomweb_url,
             "--user", PACS_USER, "--password", PACS_PASSWORD, "--facility", facility], gateway_env)
    listed = run_cli(["destinations", "list"], gateway_env)
    assert "sealed-pacs" in listed and PACS_PASSWORD not in listed

    engine = create_engine(postgres_url)
    try:
        options, sealed = _raw_destination(engine, "sealed-pacs")
    finally:
        engine.dispose()
    assert PACS_PASSWORD not in options and PACS_PASSWORD not in sealed
    assert json.loads(options) == {"url": auth_pacs.dicomweb_url, "user": PACS_USER}
    key = gateway_env["RELAYPACS_SECRET_KEY"]
    assert json.loads(Fernet(key).decrypt(sealed.encode())) == {"password": PACS_PASSWORD}

    gateway = Gateway(api_server.url, make_user(facility, "uploader"))
    files = synthetic_study(4)
    batch_id = gateway.open_batch()
    for index, data in enumerate(files):
        gateway.upload(batch_id, data, f"f{index}.dcm")
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done", timeout=90)
    assert report["totals"]["deliveries_by_state"] == {"delivered": 4}
    assert auth_pacs.count() == 4  # the session authenticates as the registered user
    assert PACS_PASSWORD not in worker.log_tail(400)


def _upgrade(env: dict[str, str], url: str, key: str | None) -> subprocess.CompletedProcess:
    env = {**env, "RELAYPACS_DATABASE_URL": url}
    env.pop("RELAYPACS_SECRET_KEY", None)
    if key is not None:
        env["RELAYPACS_SECRET_KEY"] = key
    return subprocess.run(relaypacs_argv("db", "upgrade"), env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


def test_upgrade_encrypts_a_plaintext_row_and_rotation_moves_it_to_a_new_key(gateway_env):
    name = create_database("relaypacs_secrets_")
    url = database_url(name)
    engine = create_engine(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", SCRIPT_LOCATION)
        cfg.set_main_option("sqlalchemy.url", url)
        command.upgrade(cfg, "safety_scp_01")  # the schema of the release before
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO destinations (name, kind, options, enabled, created_at) VALUES "
                "('old-pacs', 'stowrs', CAST(:o AS JSON), true, now())"),
                {"o": json.dumps({"url": "http://pacs/dicom-web", "user": PACS_USER,
                                  "password": PACS_PASSWORD})})

        refused = _upgrade(gateway_env, url, key=None)
        assert refused.returncode != 0
        assert "RELAYPACS_SECRET_KEY" in refused.stderr and "old-pacs" in refused.stderr, \
            refused.stderr[-2000:]
        # Rolled back whole: still at the old revision, the row as it was.
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == \
                "safety_scp_01"
            options = conn.execute(text("SELECT CAST(options AS TEXT) FROM destinations")).scalar_one()
        assert json.loads(options)["password"] == PACS_PASSWORD

        old_key = Fernet.generate_key().decode()
        done = _upgrade(gateway_env, url, key=old_key)
        assert done.returncode == 0, done.stderr[-2000:]
        options, sealed = _raw_destination(engine, "old-pacs")
        assert PACS_PASSWORD not in options and PACS_PASSWORD not in sealed
        assert json.loads(Fernet(old_key).decrypt(sealed.encode())) == {"password": PACS_PASSWORD}

        new_key = Fernet.generate_key().decode()
        env = {**gateway_env, "RELAYPACS_DATABASE_URL": url,
               "RELAYPACS_SECRET_KEY": f"{new_key},{old_key}"}
        started = time.monotonic()
        out = run_cli(["destinations", "rotate-key"], env)
        print(f"\nrotate-key: {time.monotonic() - started:.2f} s for 1 destination")
        assert "secrets of 1 destinations re-encrypted" in out
        _, rotated = _raw_destination(engine, "old-pacs")
        assert json.loads(Fernet(new_key).decrypt(rotated.encode())) == {"password": PACS_PASSWORD}
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(rotated.encode())
        with engine.connect() as conn:
            actions = conn.execute(text("SELECT action FROM audit_events ORDER BY id")).scalars().all()
        assert actions == ["destinations.key_rotated"]
    finally:
        engine.dispose()
        drop_database(name)
