"""``relaypacs destinations ...``: the PACS destinations studies are forwarded to."""

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
    from pipeline.delivery.destinations.registry import DestinationSpecError, add_destination

    with open_session() as session:
        try:
            dest = add_destination(session, name, stow_url=stow_url, user=user,
                                   password=password, bearer=bearer, dimse=dimse,
                                   folder=folder, facility=facility)
        except DestinationSpecError as exc:
            raise click.ClickException(str(exc)) from exc
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
