"""``relaypacs users``: a password set at creation (``--password-prompt``, the token still
printed last for programs) or later (``set-password``, which ends the user's sessions), and
``disable``, which locks the user out of sign-in, token and sessions; each audited."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from api.cli import main
from pipeline.models import AuditEvent, UserSession


def test_create_with_a_password_then_change_it_then_disable(settings, app, session):
    env = {"RELAYPACS_VAR_DIR": str(settings.var_dir), "RELAYPACS_BROKER_URL": "memory://"}
    runner = CliRunner()
    created = runner.invoke(main, ["users", "create", "--email", "qa@clinic.test", "--facility", "North",
                                   "--role", "qa_manager", "--password-prompt"],
                            input="short\nshort\n", env=env)
    assert created.exit_code != 0 and "at least 10" in created.output
    created = runner.invoke(main, ["users", "create", "--email", "qa@clinic.test", "--facility", "North",
                                   "--role", "qa_manager", "--password-prompt"],
                            input="first long secret\nfirst long secret\n", env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("rp_")  # programs still read the token on the last line
    assert "first long secret" not in created.output

    client = app.test_client()
    form = {"email": "qa@clinic.test", "password": "first long secret"}
    assert client.post("/login", data=form).status_code == 302
    assert client.get("/dashboard").status_code == 302  # a QA manager lands on their facility

    changed = runner.invoke(main, ["users", "set-password", "--email", "qa@clinic.test"],
                            input="second long secret\nsecond long secret\n", env=env)
    assert changed.exit_code == 0 and "1 session(s) ended" in changed.output
    assert client.get("/api/v1/batches").status_code == 401
    assert client.post("/login", data=form).status_code == 401
    assert client.post("/login", data={**form, "password": "second long secret"}).status_code == 302

    disabled = runner.invoke(main, ["users", "disable", "--email", "qa@clinic.test"], env=env)
    assert disabled.exit_code == 0 and "1 session(s) ended" in disabled.output
    assert client.get("/api/v1/batches").status_code == 401
    assert client.get("/api/v1/batches", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert runner.invoke(main, ["users", "enable", "--email", "qa@clinic.test"], env=env).exit_code == 0
    assert client.post("/login", data={**form, "password": "second long secret"}).status_code == 302

    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("user.%"))
                              .order_by(AuditEvent.id)).all()
    assert actions == ["user.created", "user.password_set", "user.disabled", "user.enabled"]
    reasons = session.scalars(select(UserSession.revoked_reason).order_by(UserSession.id)).all()
    assert reasons == ["password_changed", "user_disabled", None]
