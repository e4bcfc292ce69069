"""Destination passwords and tokens at rest: sealed with the configured key (never in the stored
row in plain text), opened only into a sender, encrypted by the migration when an older release
stored them in plain text, and re-encrypted under a new key by the rotation."""

from __future__ import annotations

import json
import stat

import pytest
from alembic import command
from click.testing import CliRunner
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import create_engine, text

from api.cli import main
from config import load_settings
from pipeline.delivery.destinations import sender_for
from pipeline.delivery.destinations.credentials import (
    KEY_FILE,
    SecretBox,
    SecretKeyError,
    rotate,
)
from pipeline.delivery.destinations.registry import add_destination
from pipeline.models import AuditEvent, Destination

# Test values, found (or not) in the stored rows by their text.
PASSWORD = "s3cret-pacs-password"  # noqa: S105
TOKEN = "bearer-token-value-42"  # noqa: S105


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


def _raw_rows(database_url: str) -> list[tuple[str, str | None]]:
    """The destinations table as stored: the JSON text and the sealed column, not through ORM."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                text("SELECT CAST(options AS TEXT), sealed_secrets FROM destinations ORDER BY id"))]
    finally:
        engine.dispose()


def test_the_stored_row_holds_no_secret_in_plain_text(session, settings, key):
    box = SecretBox([key])
    add_destination(session, "pacs-basic", stow_url="http://pacs.example/dicom-web", user="relay",
                    password=PASSWORD, secret_box=box)
    add_destination(session, "pacs-bearer", stow_url="http://pacs.example/dicom-web",
                    bearer=TOKEN, secret_box=box)
    add_destination(session, "pacs-open", stow_url="http://pacs.example/dicom-web", secret_box=box)
    session.commit()

    rows = _raw_rows(settings.database_url)
    for options, sealed in rows:
        assert PASSWORD not in options and TOKEN not in options
        assert sealed is None or (PASSWORD not in sealed and TOKEN not in sealed)
    assert [json.loads(options) for options, _ in rows] == [
        {"url": "http://pacs.example/dicom-web", "user": "relay"},
        {"url": "http://pacs.example/dicom-web"},
        {"url": "http://pacs.example/dicom-web"},
    ]
    assert json.loads(Fernet(key).decrypt(rows[0][1])) == {"password": PASSWORD}
    assert json.loads(Fernet(key).decrypt(rows[1][1])) == {"token": TOKEN}
    assert rows[2][1] is None


def test_the_sender_gets_the_secrets_and_nothing_else_does(session, key):
    box = SecretBox([key])
    basic = add_destination(session, "pacs-basic", stow_url="http://pacs.example/dicom-web",
                            user="relay", password=PASSWORD, secret_box=box)
    bearer = add_destination(session, "pacs-bearer", stow_url="http://pacs.example/dicom-web",
                             bearer=TOKEN, secret_box=box)
    assert sender_for(basic, box).session.auth == ("relay", PASSWORD)
    assert sender_for(bearer, box).session.headers["Authorization"] == f"Bearer {TOKEN}"
    # The row's own attributes (what a listing, a log line or a JSON shape would show).
    assert PASSWORD not in repr(basic.options) and TOKEN not in repr(bearer.options)
    with pytest.raises(SecretKeyError, match="key they were sealed with is missing"):
        sender_for(basic, SecretBox([Fernet.generate_key().decode()]))


def test_a_secret_is_refused_without_a_box_and_a_server_database_needs_a_key(session):
    with pytest.raises(ValueError, match="secret_box"):
        add_destination(session, "p", stow_url="http://pacs/dicom-web", user="u", password=PASSWORD)
    box = SecretBox([])  # no key, no key file: a server database
    with pytest.raises(SecretKeyError, match="RELAYPACS_SECRET_KEY is not set"):
        add_destination(session, "p", stow_url="http://pacs/dicom-web", user="u",
                        password=PASSWORD, secret_box=box)
    with pytest.raises(SecretKeyError, match="32 url-safe base64"):
        SecretBox(["not-a-key"]).seal({"password": "p"})
    # A destination without a secret needs no key at all.
    add_destination(session, "open", stow_url="http://pacs/dicom-web", secret_box=box)


def test_the_embedded_gateway_keeps_a_generated_key_in_its_var_folder(settings):
    box = SecretBox.from_settings(settings)  # SQLite, RELAYPACS_SECRET_KEY unset
    sealed = box.seal({"password": PASSWORD})
    key_file = settings.var_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Another process of the same gateway finds the same key.
    assert SecretBox.from_settings(load_settings({"RELAYPACS_VAR_DIR": str(settings.var_dir)})
                                   ).open(sealed) == {"password": PASSWORD}
    server = load_settings({"RELAYPACS_VAR_DIR": str(settings.var_dir),
                            "RELAYPACS_DATABASE_URL": "postgresql+psycopg2://db/relaypacs"})
    with pytest.raises(SecretKeyError):
        SecretBox.from_settings(server).open(sealed)


def test_the_migration_encrypts_a_plaintext_row_of_the_previous_release(tmp_path, monkeypatch, key):
    from pipeline.db.migrate import SCRIPT_LOCATION

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    cfg = _alembic_config(SCRIPT_LOCATION, url)
    command.upgrade(cfg, "safety_scp_01")
    engine = create_engine(url)
    with engine.begin() as conn:
        for name, options in (
            ("basic", {"url": "http://pacs/dicom-web", "user": "relay", "password": PASSWORD}),
            ("bearer", {"url": "http://pacs/dicom-web", "token": TOKEN}),
            ("no-password", {"url": "http://pacs/dicom-web", "user": "relay", "password": ""}),
            ("dimse", {"aet": "PACS", "host": "pacs", "port": 104}),
        ):
            conn.execute(text("INSERT INTO destinations (name, kind, options, enabled, created_at) "
                              "VALUES (:n, 'stowrs', :o, 1, '2026-01-01 00:00:00')"),
                         {"n": name, "o": json.dumps(options)})
    engine.dispose()
    monkeypatch.setenv("RELAYPACS_SECRET_KEY", key)

    command.upgrade(cfg, "head")

    rows = _raw_rows(url)
    assert all(PASSWORD not in o and TOKEN not in o and PASSWORD not in (s or "") for o, s in rows)
    assert [json.loads(o) for o, _ in rows] == [
        {"url": "http://pacs/dicom-web", "user": "relay"},
        {"url": "http://pacs/dicom-web"},
        {"url": "http://pacs/dicom-web", "user": "relay"},
        {"aet": "PACS", "host": "pacs", "port": 104},
    ]
    assert [s is not None for _, s in rows] == [True, True, False, False]
    assert json.loads(Fernet(key).decrypt(rows[0][1])) == {"password": PASSWORD}
    assert json.loads(Fernet(key).decrypt(rows[1][1])) == {"token": TOKEN}


def test_the_migration_refuses_plaintext_rows_with_a_malformed_key(tmp_path, monkeypatch):
    from pipeline.db.migrate import SCRIPT_LOCATION

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    cfg = _alembic_config(SCRIPT_LOCATION, url)
    command.upgrade(cfg, "safety_scp_01")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO destinations (name, kind, options, enabled, created_at) "
                          "VALUES ('basic', 'stowrs', :o, 1, '2026-01-01 00:00:00')"),
                     {"o": json.dumps({"url": "http://pacs/dicom-web", "password": PASSWORD})})
    engine.dispose()
    monkeypatch.setenv("RELAYPACS_SECRET_KEY", "not-a-fernet-key")
    with pytest.raises(RuntimeError, match="destinations basic hold a password or token"):
        command.upgrade(cfg, "head")
    (options, _), = _raw_rows(url)
    assert json.loads(options)["password"] == PASSWORD  # left as it was, not half-done


def _alembic_config(script_location: str, url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_rotation_re_encrypts_under_the_new_key_and_the_old_key_alone_no_longer_opens(
        session, settings, key):
    old = key
    new = Fernet.generate_key().decode()
    box = SecretBox([old])
    add_destination(session, "basic", stow_url="http://pacs/dicom-web", user="relay",
                    password=PASSWORD, secret_box=box)
    add_destination(session, "bearer", stow_url="http://pacs/dicom-web", bearer=TOKEN,
                    secret_box=box)
    session.commit()
    before = [sealed for _, sealed in _raw_rows(settings.database_url)]

    assert rotate(session, SecretBox([new, old])) == 2
    session.commit()

    after = [sealed for _, sealed in _raw_rows(settings.database_url)]
    assert all(a != b for a, b in zip(after, before, strict=True))
    for sealed in after:
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(sealed.encode())
    only_new = SecretBox([new])
    rows = session.query(Destination).order_by(Destination.id).all()
    assert sender_for(rows[0], only_new).session.auth == ("relay", PASSWORD)
    assert sender_for(rows[1], only_new).session.headers["Authorization"] == f"Bearer {TOKEN}"


def test_the_commands_seal_list_and_rotate_without_printing_a_secret(
        app, settings, session, monkeypatch, key):
    monkeypatch.setenv("RELAYPACS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RELAYPACS_SECRET_KEY", key)
    runner = CliRunner()
    added = runner.invoke(main, ["destinations", "add", "main-pacs", "--stow-url",
                                 "http://pacs/dicom-web", "--user", "relay", "--password", PASSWORD])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["destinations", "list"])
    assert listed.exit_code == 0 and "main-pacs" in listed.output
    assert PASSWORD not in listed.output and PASSWORD not in added.output

    new = runner.invoke(main, ["destinations", "new-key"]).output.strip()
    Fernet(new)  # a usable key
    monkeypatch.setenv("RELAYPACS_SECRET_KEY", f"{new},{key}")
    rotated = runner.invoke(main, ["destinations", "rotate-key"])
    assert rotated.exit_code == 0, rotated.output
    assert "secrets of 1 destinations re-encrypted" in rotated.output
    (_, sealed), = _raw_rows(settings.database_url)
    assert json.loads(Fernet(new).decrypt(sealed.encode())) == {"password": PASSWORD}
    with pytest.raises(InvalidToken):
        Fernet(key).decrypt(sealed.encode())

    # Rotating to a key that cannot open the rows says so, and changes nothing.
    monkeypatch.setenv("RELAYPACS_SECRET_KEY", Fernet.generate_key().decode())
    refused = runner.invoke(main, ["destinations", "rotate-key"])
    assert refused.exit_code == 1 and "put the key they were sealed with" in refused.output
    assert _raw_rows(settings.database_url)[0][1] == sealed
    session.expire_all()
    actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    assert actions == ["destination.added", "destinations.key_rotated"]
