"""``relaypacs users ...``: users, their API tokens (create, revoke, rotate) and sign-in
passwords (set-password, disable, enable), each audited."""

from __future__ import annotations

import click

from api.cli.session import open_session

# Spelled out (not imported from pipeline.models) so ``relaypacs --help`` stays fast; a unit
# test checks it against pipeline.models.Role.
ROLE_NAMES = ["uploader", "qa_manager", "admin", "clinician", "radiologist", "consultant", "teaching",
              "teaching_publisher"]


@click.group()
def users() -> None:
    """API users and tokens."""


def _lifetime(days: int):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(days=days) if days > 0 else None


@users.command("create")
@click.option("--email", required=True)
@click.option("--facility", required=True)
@click.option("--role", "roles", required=True, multiple=True, type=click.Choice(ROLE_NAMES),
              help="repeat for several roles")
@click.option("--expires-days", default=365, show_default=True, type=int,
              help="token lifetime; 0: never expires")
@click.option("--password-prompt", is_flag=True,
              help="also set a sign-in password for the pages (asked twice, never echoed)")
def users_create(email: str, facility: str, roles: tuple[str, ...], expires_days: int,
                 password_prompt: bool) -> None:
    """Create a user; the token is printed once, on the last line."""
    from pipeline.accounts import audit, passwords
    from pipeline.accounts.users import create_user

    password = _ask_password() if password_prompt else None
    with open_session() as session:
        try:
            user, token = create_user(session, email, facility, roles, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if password is not None:
            passwords.set_password(session, user, password)
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.created",
                     f"user:{user.id}", {"roles": list(user.roles), "password": password is not None})
        session.commit()
        click.echo(f"created user {user.id} ({', '.join(user.roles)}) in facility {facility!r}; token:",
                   err=True)
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


@users.command("roles")
@click.option("--email", required=True)
@click.option("--role", "roles", required=True, multiple=True, type=click.Choice(ROLE_NAMES),
              help="the full set: repeat for several roles")
def users_roles(email: str, roles: tuple[str, ...]) -> None:
    """Replace a user's roles."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import change_roles

    with open_session() as session:
        try:
            user = change_roles(session, email, roles)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.roles_changed",
                     f"user:{user.id}", {"roles": list(user.roles)})
        session.commit()
    click.echo(f"user {user.id} now holds: {', '.join(user.roles)}")


@users.command("assign")
@click.option("--email", required=True)
@click.option("--facility", required=True)
@click.option("--subspecialty", "subspecialties", multiple=True, help="consult pool, e.g. neuro; repeatable")
def users_assign(email: str, facility: str, subspecialties: tuple[str, ...]) -> None:
    """Let a radiologist or consultant read (and report for) another facility."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import assign_reader

    with open_session() as session:
        try:
            row = assign_reader(session, email, facility, subspecialties)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, row.facility_id, "cli"), "reader.assigned",
                     f"user:{row.user_id}", {"facility_id": row.facility_id,
                                             "subspecialties": row.subspecialties})
        session.commit()
    click.echo(f"user {row.user_id} reads facility {row.facility_id} "
               f"({', '.join(row.subspecialties) or 'no subspecialty'})")


@users.command("unassign")
@click.option("--email", required=True)
@click.option("--facility", required=True)
def users_unassign(email: str, facility: str) -> None:
    """End a reader's assignment to a facility."""
    from pipeline.accounts import audit
    from pipeline.accounts.users import unassign_reader

    with open_session() as session:
        try:
            removed = unassign_reader(session, email, facility)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if not removed:
            raise click.ClickException(f"{email!r} is not assigned to {facility!r}")
        audit.record(session, audit.Actor(None, None, "cli"), "reader.unassigned", f"facility:{facility}")
        session.commit()
    click.echo("assignment removed")
