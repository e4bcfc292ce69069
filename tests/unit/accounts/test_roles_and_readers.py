"""Several roles per user: ``require`` passes when any role is allowed; the CLI creates users
with several roles and changes them; radiologists and consultants read their own facility plus
the ones assigned to them (``readable_facility_ids``), admins every one, others their own; and
the migration gives every existing user exactly the role they had."""

from __future__ import annotations

import json

import sqlalchemy as sa
from click.testing import CliRunner

from api.cli import main
from api.cli.users import ROLE_NAMES
from pipeline.accounts.scoping import readable_facility_ids
from pipeline.accounts.users import assign_reader, create_user, get_or_create_facility
from pipeline.models import AuditEvent, Role, User


def test_cli_role_names_are_the_model_roles():
    assert sorted(ROLE_NAMES) == sorted(r.value for r in Role)


def test_any_role_passes_require_and_the_primary_role_is_the_strongest(app, session):
    user, token = create_user(session, "both@north.test", "North", ["uploader", "qa_manager"])
    session.commit()
    assert user.roles == ["uploader", "qa_manager"] and user.role == "qa_manager"
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    # qa_manager-only route and an uploader route both answer.
    assert client.get("/api/v1/exports", headers=auth).status_code == 200
    assert client.get("/api/v1/batches", headers=auth).status_code == 200
    _, clinician = create_user(session, "c@north.test", "North", "clinician")
    session.commit()
    # A reading role gets only the routes that name it: not the upload side's bare require().
    assert client.get("/api/v1/batches", headers={"Authorization": f"Bearer {clinician}"}).status_code == 403


def test_readable_facilities(session, app):
    admin, _ = create_user(session, "a@x.test", "North", "admin")
    clinician, _ = create_user(session, "c@x.test", "North", "clinician")
    reader, _ = create_user(session, "r@x.test", "North", ["radiologist", "consultant"])
    south = get_or_create_facility(session, "South")
    get_or_create_facility(session, "East")
    assign_reader(session, "r@x.test", "South", ["Neuro", " msk ", ""])
    session.commit()
    assert readable_facility_ids(session, admin) is None
    assert readable_facility_ids(session, clinician) == {clinician.facility_id}
    assert readable_facility_ids(session, reader) == {reader.facility_id, south.id}
    row = assign_reader(session, "r@x.test", "South", ["chest"])  # again: replaces the pools
    assert row.subspecialties == ["chest"]


def test_cli_creates_several_roles_changes_them_and_assigns(settings, app, session):
    env = {"RELAYPACS_VAR_DIR": str(settings.var_dir), "RELAYPACS_BROKER_URL": "memory://"}
    runner = CliRunner()
    created = runner.invoke(main, ["users", "create", "--email", "rad@north.test", "--facility", "North",
                                   "--role", "radiologist", "--role", "consultant"], env=env)
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().splitlines()[-1].startswith("rp_")
    runner.invoke(main, ["users", "create", "--email", "u@south.test", "--facility", "South",
                         "--role", "uploader"], env=env)
    refused = runner.invoke(main, ["users", "assign", "--email", "u@south.test", "--facility", "North"],
                            env=env)
    assert refused.exit_code != 0 and "neither a radiologist nor a consultant" in refused.output
    assigned = runner.invoke(main, ["users", "assign", "--email", "rad@north.test", "--facility", "South",
                                    "--subspecialty", "neuro"], env=env)
    assert assigned.exit_code == 0, assigned.output
    changed = runner.invoke(main, ["users", "roles", "--email", "rad@north.test", "--role", "radiologist"],
                            env=env)
    assert changed.exit_code == 0 and "radiologist" in changed.output
    session.expire_all()
    user = session.scalar(sa.select(User).where(User.email == "rad@north.test"))
    assert user.roles == ["radiologist"] and user.role == "radiologist"
    actions = session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert {"user.created", "reader.assigned", "user.roles_changed"} <= set(actions)


def test_migration_gives_existing_users_their_one_role(tmp_path):
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'roles.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", "pipeline.db:migrations")
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "reports_01")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO facilities (id, name, created_at) VALUES (1, 'F', '2026-01-01')"))
        for i, role in enumerate(("uploader", "qa_manager", "admin")):
            conn.execute(sa.text("INSERT INTO users (email, role, facility_id, token_hash, created_at) "
                                 "VALUES (:e, :r, 1, :h, '2026-01-01')"),
                         {"e": f"{i}@f", "r": role, "h": str(i)})
    command.upgrade(cfg, "reports_02")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT role, roles FROM users ORDER BY id")).all()
    assert [(role, json.loads(roles)) for role, roles in rows] == [
        ("uploader", ["uploader"]), ("qa_manager", ["qa_manager"]), ("admin", ["admin"])]
    command.downgrade(cfg, "reports_01")
