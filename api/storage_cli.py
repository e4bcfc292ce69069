"""``relaypacs storage ...``: the cost report, the tiering run (or its dry run), bucket setup,
the policy check, restores and the DR copy, for operators at a shell."""

from __future__ import annotations

import json

import click

from config import load_settings


def _session():  # noqa: ANN202
    from api.cli import _session as checked_session  # the one place that checks the schema

    return checked_session()


def _facility_ids(session, names: tuple[str, ...]) -> list[int] | None:  # noqa: ANN001
    from sqlalchemy import select

    from pipeline.models import Facility

    if not names:
        return None
    found = dict(session.execute(select(Facility.name, Facility.id).where(Facility.name.in_(names))).all())
    missing = sorted(set(names) - set(found))
    if missing:
        raise click.ClickException(f"no facility named {', '.join(map(repr, missing))}")
    return sorted(found.values())


def _policy():  # noqa: ANN202
    from pipeline import lifecycle

    settings = load_settings()
    try:
        policy = lifecycle.TierPolicy.of(settings.storage_tiers)
        lifecycle.check_rendition_days(policy, settings.storage_rendition_days)
        lifecycle.check_read_fraction(settings.storage_cold_reads_per_month)
        return policy, lifecycle.parse_prices(settings.storage_prices)
    except lifecycle.PolicyError as exc:
        raise click.ClickException(f"storage policy: {exc}") from exc


@click.group()
def storage() -> None:
    """Object storage lifecycle: tiers, bundles, restores, DR copy, cost report."""


@storage.command("policy")
def policy_command() -> None:
    """Check and print the tiering policy and prices (exit 1 when invalid)."""
    policy, prices = _policy()
    settings = load_settings()
    click.echo(f"tiers: {policy.describe()}")
    click.echo(f"managed by: {settings.storage_managed_by}; "
               f"bundles below {settings.storage_bundle_below_bytes} B")
    click.echo("prices (USD/GB-month): " + ", ".join(f"{c} {p}" for c, p in prices.items()))
    click.echo(f"renditions expire after {settings.storage_rendition_days} d; cold reads modelled at "
               f"{settings.storage_cold_reads_per_month:.1%} of IA/GLACIER_IR bytes a month")


@storage.command("report")
@click.option("--facility", "facilities", multiple=True, help="only these facilities (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="the API's JSON document")
def report_command(facilities: tuple[str, ...], as_json: bool) -> None:
    """Objects and bytes per tier and facility, monthly cost, saving vs all-STANDARD."""
    from pipeline import storage_report

    _, prices = _policy()
    settings = load_settings()
    with _session() as session:
        dr_class = settings.dr_storage_class if settings.dr_storage_url else None
        built = storage_report.build(session, prices, facility_ids=_facility_ids(session, facilities),
                                     dr_storage_class=dr_class,
                                     cold_reads_per_month=settings.storage_cold_reads_per_month,
                                     restore_days=settings.storage_restore_days)
    if as_json:
        click.echo(json.dumps(built.as_dict(), indent=2))
        return
    click.echo(f"{'tier':<14}{'objects':>12}{'GiB':>14}{'USD/month':>14}")
    for storage_class, objects, size, cost in storage_report.by_class_table(built):
        click.echo(f"{storage_class:<14}{objects:>12}{size / 1024**3:>14.3f}{cost:>14.2f}")
    click.echo(f"{'total':<14}{built.total.objects:>12}{built.total.bytes / 1024**3:>14.3f}"
               f"{built.total.monthly_cost:>14.2f}")
    fees = built.fees.as_dict()
    click.echo(f"fees (last 30 days): transitions {fees['transitions']:.2f}, cold reads "
               f"{fees['cold_reads']:.2f} ({built.cold_reads_per_month:.0%} of IA/GLACIER_IR bytes a month), "
               f"restores {fees['restores']:.2f} USD")
    click.echo(f"monthly bill: {built.monthly_cost:.2f} USD")
    click.echo(f"all STANDARD: {built.baseline_cost:.2f} USD/month; saving {built.saving:.1%} "
               f"({built.bundles} bundles holding {built.bundled_instances} instances)")
    for name, lines in sorted(built.by_facility.items()):
        own_fees = built.facility_fees.get(name)
        cost = sum(line.monthly_cost for line in lines.values()) + (own_fees.total if own_fees else 0.0)
        parts = ", ".join(f"{c} {line.objects}" for c, line in lines.items())
        click.echo(f"  {name}: {cost:.2f} USD/month ({parts})")


@storage.command("tier")
@click.option("--dry-run", is_flag=True, help="print what is due, change nothing")
@click.option("--now", "now", help="decide as of this ISO time (default: now)")
@click.option("--facility", "facilities", multiple=True, help="only these facilities (repeatable)")
def tier_command(dry_run: bool, now: str | None, facilities: tuple[str, ...]) -> None:
    """Run the nightly lifecycle now, in this process (or only show its plan)."""
    _policy()
    from pipeline import tiering
    from workers import runtime
    from workers.storage_tasks import clock, run_lifecycle, tiering_options

    with _session() as session:
        facility_ids = _facility_ids(session, facilities)
    if not dry_run:
        click.echo(json.dumps(run_lifecycle(now=now, facility_ids=facility_ids), indent=2))
        return
    options = tiering_options(runtime.settings(), facility_ids)
    with runtime.session_scope() as session:
        result = tiering.run(session, runtime.store(), options, clock(now), checkpoint=session.flush,
                             dry_run=True)
        session.rollback()
    click.echo(json.dumps(result.as_dict(), indent=2))


@storage.command("setup")
def setup_command() -> None:
    """Enable bucket versioning; with managed_by=s3, write the lifecycle rules."""
    from pipeline import tiering
    from workers import runtime
    from workers.storage_tasks import tiering_options

    _policy()
    done = tiering.ensure_bucket_setup(runtime.store(), tiering_options(runtime.settings()))
    click.echo(f"versioning {'enabled' if done['versioning'] else 'already on (or not applicable)'}; "
               f"lifecycle rules {'written' if done['lifecycle'] else 'unchanged'}")


@storage.command("restore")
@click.option("--study", "study_id", type=int)
@click.option("--instance", "instance_id", type=int)
@click.option("--purpose", type=click.Choice(["read", "forward"]), default="read", show_default=True)
def restore_command(study_id: int | None, instance_id: int | None, purpose: str) -> None:
    """Ask for a cold study or instance back; prints each request's expected time."""
    from sqlalchemy import select

    from pipeline import restore
    from pipeline.models import Instance, StoredObject, utcnow

    if (study_id is None) == (instance_id is None):
        raise click.ClickException("give exactly one of --study and --instance")
    tier = load_settings().storage_restore_tier
    with _session() as session:
        if study_id is not None:
            requests = restore.request_for_study(session, study_id, purpose=purpose, tier=tier)
        else:
            instance = session.get(Instance, instance_id)
            if instance is None:
                raise click.ClickException(f"no instance {instance_id}")
            row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
            requests = [] if row is None or restore.instance_readable(session, row, utcnow()) else [
                restore.request_restore(session, row, purpose=purpose, tier=tier)]
        session.commit()
        described = [restore.describe(r) for r in requests]
    if not described:
        click.echo("readable as it is; nothing to restore")
        return
    from workers import chains

    chains.enqueue_restores()
    for row in described:
        click.echo(f"restore #{row['id']} instance {row['instance_id']}: {row['state']}, "
                   f"expected by {row['expected_ready_at']}")


@storage.command("replicate")
@click.option("--retry-failed", is_flag=True, help="give DR dead letters fresh attempts first")
def replicate_command(retry_failed: bool) -> None:
    """Copy pending objects to the DR bucket now, in this process."""
    from pipeline import replication
    from workers.storage_tasks import replicate

    if retry_failed:
        with _session() as session:
            click.echo(f"{replication.retry_failed(session)} DR copies back to pending", err=True)
            session.commit()
    click.echo(json.dumps(replicate(), indent=2))
