"""``relaypacs destinations ...``: the PACS destinations studies are forwarded to, and the key
their passwords and tokens are sealed with (new-key, rotate-key). Secrets are never printed."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.group()
def destinations() -> None:
    """PACS destinations."""


@destinations.command("add")
@click.argument("name")
@click.option("--stow-url", help="DICOMweb root, e.g. http://pacs/dicom-web")
@click.option("--user")
@click.option("--password")
@click.option("--token", "bearer", help="bearer token for the STOW-RS endpoint")
@click.option("--dimse", help="AET@HOST:PORT of a C-STORE SCP")
@click.option("--folder", type=click.Path(file_okay=False), help="local folder (demo)")
@click.option("--facility", help="only for this facility (default: every facility)")
def destinations_add(name: str, stow_url: str | None, user: str | None, password: str | None,
                     bearer: str | None, dimse: str | None, folder: str | None,
                     facility: str | None) -> None:
    """Add a destination: exactly one of --stow-url, --dimse, --folder."""
    from config import load_settings
    from pipeline.accounts import audit
    from pipeline.delivery.destinations.credentials import SecretBox, SecretKeyError
    from pipeline.delivery.destinations.registry import DestinationSpecError, add_destination

    with open_session() as session:
        try:
            dest = add_destination(session, name, stow_url=stow_url, user=user,
                                   password=password, bearer=bearer, dimse=dimse,
                                   folder=folder, facility=facility,
                                   secret_box=SecretBox.from_settings(load_settings()))
        except (DestinationSpecError, SecretKeyError) as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, dest.facility_id, "cli"), "destination.added",
                     f"destination:{dest.id}",
                     {"name": dest.name, "kind": dest.kind, "secrets": dest.sealed_secrets is not None})
        session.commit()
        click.echo(f"destination {dest.id} {dest.name} ({dest.kind}) added")


@destinations.command("list")
def destinations_list() -> None:
    from sqlalchemy import select

    from pipeline.models import Destination

    with open_session() as session:
        for d in session.scalars(select(Destination).order_by(Destination.id)):
            where = d.options.get("url") or d.options.get("path") or (
                f"{d.options.get('aet')}@{d.options.get('host')}:{d.options.get('port')}")
            click.echo(f"{d.id}\t{d.name}\t{d.kind}\t{where}\t{'enabled' if d.enabled else 'disabled'}")


@destinations.command("new-key")
def destinations_new_key() -> None:
    """Print a new key for RELAYPACS_SECRET_KEY (nothing is stored)."""
    from pipeline.delivery.destinations.credentials import new_key

    click.echo(new_key())


@destinations.command("rotate-key")
def destinations_rotate_key() -> None:
    """Re-encrypt every stored password and token under the first key of RELAYPACS_SECRET_KEY.

    Rotation: set RELAYPACS_SECRET_KEY=NEW,OLD everywhere, run this, then set it to NEW."""
    from config import load_settings
    from pipeline.accounts import audit
    from pipeline.delivery.destinations.credentials import SecretBox, SecretKeyError, rotate

    with open_session() as session:
        try:
            count = rotate(session, SecretBox.from_settings(load_settings()))
        except SecretKeyError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, None, "cli"), "destinations.key_rotated",
                     None, {"destinations": count})
        session.commit()
    click.echo(f"secrets of {count} destinations re-encrypted under the first key; "
               "keys after it can be dropped from RELAYPACS_SECRET_KEY now")
