"""``relaypacs deliveries ...``: dead letters (failed deliveries) listed and replayed."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.group()
def deliveries() -> None:
    """Deliveries: list dead letters, replay them."""


def _delivery_choice(func):  # noqa: ANN001, ANN202
    for option in reversed([
        click.option("--id", "ids", multiple=True, type=int, help="delivery id (repeatable)"),
        click.option("--batch", "batch_id", type=int),
        click.option("--destination"),
    ]):
        func = option(func)
    return func


@deliveries.command("list")
@click.option("--status", default="failed", show_default=True)
@_delivery_choice
def deliveries_list(status: str, ids: tuple[int, ...], batch_id: int | None,
                    destination: str | None) -> None:
    from pipeline.delivery.dead_letters import SelectionError, describe, select_deliveries

    with open_session() as session:
        try:
            query = select_deliveries(status=status, ids=ids, batch_id=batch_id,
                                      destination=destination)
        except SelectionError as exc:
            raise click.ClickException(str(exc)) from exc
        rows = describe(session, session.scalars(query.limit(1000)).all())
    for row in rows:
        click.echo(f"{row['id']}\tbatch {row['batch_id']}\t{row['destination']}\t{row['state']}\t"
                   f"attempts {row['attempts']}\t{row['status_code'] or '-'}\t{row['reason'] or ''}")
    click.echo(f"{len(rows)} deliveries", err=True)


@deliveries.command("retry")
@_delivery_choice
@click.option("--all", "everything", is_flag=True, help="every failed delivery")
def deliveries_retry(ids: tuple[int, ...], batch_id: int | None, destination: str | None,
                     everything: bool) -> None:
    """Replay failed deliveries (dead letters) by id, batch, destination or all."""
    from pipeline.delivery.dead_letters import SelectionError, select_deliveries
    from pipeline.delivery.forwarding import replay
    from pipeline.intake.batches import reopen_for_replay
    from workers import chains

    with open_session() as session:
        try:
            query = select_deliveries(status="failed", ids=ids, batch_id=batch_id,
                                      destination=destination, everything=everything)
        except SelectionError as exc:
            raise click.ClickException(str(exc)) from exc
        chosen = session.scalars(query).all()
        pairs = replay(session, chosen)
        reopen_for_replay(session, {d.batch_id for d in chosen})
        session.commit()
    chains.enqueue_forwarding(pairs)
    click.echo(f"replaying {len(chosen)} deliveries in {len(pairs)} study forwards")
