"""``relaypacs routes ...``: routing rules, which destinations a facility's studies go to."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.group()
def routes() -> None:
    """Routing rules: which destinations a facility's studies go to."""


@routes.command("add")
@click.option("--destination", required=True)
@click.option("--facility", help="default: every facility")
@click.option("--modality", help="default: every modality")
def routes_add(destination: str, facility: str | None, modality: str | None) -> None:
    from sqlalchemy import select

    from pipeline.accounts.users import get_or_create_facility
    from pipeline.delivery.routing import add_rule
    from pipeline.models import Destination

    with open_session() as session:
        dest = session.scalar(select(Destination).where(Destination.name == destination))
        if dest is None:
            raise click.ClickException(f"no destination named {destination!r}")
        facility_id = get_or_create_facility(session, facility).id if facility else None
        rule = add_rule(session, destination=dest, facility_id=facility_id, modality=modality)
        session.commit()
        click.echo(f"rule {rule.id}: {facility or 'every facility'} / {rule.modality or 'any modality'}"
                   f" -> {destination}")


@routes.command("list")
def routes_list() -> None:
    from sqlalchemy import select

    from pipeline.models import Destination, Facility, RoutingRule

    with open_session() as session:
        names = {d.id: d.name for d in session.scalars(select(Destination))}
        facilities = {f.id: f.name for f in session.scalars(select(Facility))}
        for rule in session.scalars(select(RoutingRule).order_by(RoutingRule.id)):
            click.echo(f"{rule.id}\t{facilities.get(rule.facility_id, '*')}\t{rule.modality or '*'}\t"
                       f"{names.get(rule.destination_id)}\t{'enabled' if rule.enabled else 'disabled'}")
