"""``relaypacs users ...``: users, their API tokens (create, revoke, rotate) and sign-in
passwords (set-password, disable, enable), each audited."""

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
@click.option("--password-prompt", is_flag=True,
              help="also set a sign-in password for the pages (asked twice, never echoed)")
def users_create(email: str, facility: str, role: str, expires_days: int, password_prompt: bool) -> None:
    """Create a user; the token is printed once, on the last line."""
    from pipeline.accounts import audit, passwords
    from pipeline.accounts.users import create_user

    password = _ask_password() if password_prompt else None
    with open_session() as session:
        try:
            user, token = create_user(session, email, facility, role, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if password is not None:
            passwords.set_password(session, user, password)
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.created",
                     f"user:{user.id}", {"role": role, "password": password is not None})
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


def _ask_password() -> str:
    from pipeline.accounts import passwords

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        passwords.check_policy(password)
    except passwords.PasswordRefused as exc:
        raise click.ClickException(str(exc)) from exc
    return password


@users.command("set-password")
@click.option("--email", required=True)
def users_set_password(email: str) -> None:
    """Set a user's sign-in password (asked twice); their sessions and reset links end."""
    from pipeline.accounts import audit, passwords

    password = _ask_password()
    with open_session() as session:
        user = passwords.user_by_email(session, email)
        if user is None:
            raise click.ClickException(f"no user with email {email!r}")
        ended = passwords.set_password(session, user, password)
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.password_set",
                     f"user:{user.id}", {"sessions_ended": ended})
        session.commit()
    click.echo(f"password of user {user.id} set; {ended} session(s) ended")


@users.command("disable")
@click.option("--email", required=True)
def users_disable(email: str) -> None:
    """Lock a user out: no sign-in, no token, every session ended."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import disable_user

    with open_session() as session:
        try:
            user, ended = disable_user(session, email)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.disabled",
                     f"user:{user.id}", {"sessions_ended": ended})
        session.commit()
    click.echo(f"user {user.id} disabled; {ended} session(s) ended")


@users.command("enable")
@click.option("--email", required=True)
def users_enable(email: str) -> None:
    """Let a disabled user sign in (and use their token) again."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import enable_user

    with open_session() as session:
        try:
            user = enable_user(session, email)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.enabled", f"user:{user.id}")
        session.commit()
    click.echo(f"user {user.id} enabled")
