"""``relaypacs scp-callers ...``: the DICOM listener's allow-list (calling AE titles, optionally
from one network, each naming its facility), each change audited."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.group("scp-callers")
def scp_callers() -> None:
    """Modalities allowed to send to `relaypacs scp`, and their facilities."""


@scp_callers.command("add")
@click.argument("ae_title")
@click.option("--facility", required=True, help="facility whose batches receive what it sends")
@click.option("--network", help="only from this network (CIDR, e.g. 10.20.0.0/16); default: any")
def scp_callers_add(ae_title: str, facility: str, network: str | None) -> None:
    """Allow a calling AE title to send for a facility."""
    from pipeline.accounts import audit
    from pipeline.intake.callers import CallerSpecError, add_caller

    with open_session() as session:
        try:
            caller = add_caller(session, ae_title, facility, network)
        except CallerSpecError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, caller.facility_id, "cli"), "scp_caller.added",
                     f"scp_caller:{caller.id}",
                     {"ae_title": caller.ae_title, "network": caller.network, "facility": facility})
        session.commit()
        where = f"from {caller.network}" if caller.network else "from any address"
        click.echo(f"scp caller {caller.id}: {caller.ae_title} {where} sends for {facility!r}")


@scp_callers.command("list")
@click.option("--facility", help="only this facility's callers")
def scp_callers_list(facility: str | None) -> None:
    """One line per entry: id, AE title, network, facility."""
    from pipeline.intake.callers import list_callers

    with open_session() as session:
        for caller in list_callers(session, facility):
            click.echo(f"{caller.id}\t{caller.ae_title}\t{caller.network or 'any'}\t"
                       f"{caller.facility.name}")


@scp_callers.command("remove")
@click.argument("ae_title")
@click.option("--network", help="the entry for this network (default: the any-address entry)")
def scp_callers_remove(ae_title: str, network: str | None) -> None:
    """Take an entry off: new associations from that caller are rejected (open ones finish)."""
    from pipeline.accounts import audit
    from pipeline.intake.callers import CallerSpecError, remove_caller

    with open_session() as session:
        try:
            caller = remove_caller(session, ae_title, network)
        except CallerSpecError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, caller.facility_id, "cli"), "scp_caller.removed",
                     f"scp_caller:{caller.id}",
                     {"ae_title": caller.ae_title, "network": caller.network})
        session.commit()
        click.echo(f"scp caller {caller.id} ({caller.ae_title}) removed")
