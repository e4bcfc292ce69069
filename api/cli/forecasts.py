"""``relaypacs forecast``: one facility's daily volume forecast, computed and stored now."""

from __future__ import annotations

import click

from api.cli.session import open_session


@click.command()
@click.option("--facility", required=True, help="facility name or id, or 'total' for every facility")
@click.option("--horizon", default=28, show_default=True, type=click.IntRange(7, 366), help="days")
@click.option("--metric", default="uploads", show_default=True, type=click.Choice(["uploads", "bytes"]))
def forecast(facility: str, horizon: int, metric: str) -> None:
    """Forecast one facility's daily volume now and store it (the weekly job does them all)."""
    import json

    from api.forecasting.serializers import forecast_json
    from pipeline.forecasting import store as forecast_store

    with open_session() as session:
        facility_id = None
        if facility != "total":
            found = forecast_store.facility_by_name_or_id(session, facility)
            if found is None:
                raise click.ClickException(f"no facility {facility!r}")
            facility_id = found.id
        row = forecast_store.run_forecast(session, facility_id, metric, horizon=horizon)
        session.commit()
        click.echo(json.dumps(forecast_json(row), indent=2))
