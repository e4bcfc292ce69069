"""``relaypacs users ...``: API users and their tokens (create, revoke, rotate), each audited."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.group()
def users() -> None:
    """API users and tokens."""


def _lifetime(days: int):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(days=days) if days > 0 else None


@users.command("create")
@click.option("--email", required=True)
@click.option("--facility", required=True)
@click.option("--role", required=True, type=click.Choice(["uploader", "qa_manager", "admin"]))
@click.option("--expires-days", default=365, show_default=True, type=int,
              help="token lifetime; 0: never expires")
def users_create(email: str, facility: str, role: str, expires_days: int) -> None:
    """Create a user; the token is printed once, on the last line."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import create_user

    with open_session() as session:
        try:
            user, token = create_user(session, email, facility, role, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.created",
                     f"user:{user.id}", {"role": role})
        session.commit()
        click.echo(f"created user {user.id} ({role}) in facility {facility!r}; token:", err=True)
    click.echo(token)


@users.command("revoke")
@click.option("--email", required=True)
def users_revoke(email: str) -> None:
    """Revoke a user's token at once."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import revoke

    with open_session() as session:
        try:
            user = revoke(session, email)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "token.revoked",
                     f"user:{user.id}")
        session.commit()
    click.echo(f"token of user {user.id} revoked")


@users.command("rotate")
@click.option("--email", required=True)
@click.option("--expires-days", default=365, show_default=True, type=int)
def users_rotate(email: str, expires_days: int) -> None:
    """Issue a new token (printed once, last line); the old one stops working."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import rotate_token

    with open_session() as session:
        try:
            user, token = rotate_token(session, email, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "token.rotated",
                     f"user:{user.id}")
        session.commit()
    click.echo(f"new token for user {user.id}:", err=True)
    click.echo(token)
