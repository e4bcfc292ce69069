"""What a storage job runs with, read from the gateway's settings: the validated tiering
options and the clock it decides by. Shared by the Celery tasks (workers/storage.py) and by
``relaypacs storage`` in a shell, which run the same lifecycle with the same settings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from config import Settings
from pipeline.dicom.grouping import spool_dir_for
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle import tiering
from pipeline.models import utcnow

# Stop a run cleanly before Celery's soft time limit (3300 s) and continue in a new task.
RUN_SECONDS = 3000.0


def clock(now: str | None) -> datetime:
    """``now`` as an ISO 8601 time (naive means UTC); unset, the real time. Tests and
    benchmarks move the clock forward to see what the lifecycle does later."""
    if not now:
        return utcnow()
    parsed = datetime.fromisoformat(now)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def tiering_options(settings: Settings, facility_ids: list[int] | None = None,
                    max_seconds: float | None = RUN_SECONDS) -> tiering.TieringOptions:
    """Validated options from settings (a bad policy fails here, loudly, with its reason)."""
    if settings.storage_restore_tier not in lifecycle.RESTORE_TIERS:
        raise lifecycle.PolicyError(f"restore tier must be one of {', '.join(lifecycle.RESTORE_TIERS)}")
    if settings.dr_storage_class not in lifecycle.CLASSES:
        raise lifecycle.PolicyError(f"unknown DR storage class {settings.dr_storage_class!r}")
    lifecycle.parse_prices(settings.storage_prices)
    lifecycle.check_read_fraction(settings.storage_cold_reads_per_month)
    return tiering.TieringOptions(
        policy=lifecycle.TierPolicy.of(settings.storage_tiers),
        bundle_below=settings.storage_bundle_below_bytes,
        managed_by=settings.storage_managed_by,
        concurrency=settings.storage_tier_concurrency,
        abort_multipart_days=settings.storage_abort_multipart_days,
        upload_expiry=timedelta(seconds=settings.upload_expiry_seconds),
        spool_dir=spool_dir_for(settings.var_dir),
        max_seconds=max_seconds,
        facility_ids=tuple(facility_ids) if facility_ids else None,
        rendition_days=settings.storage_rendition_days,
    )
