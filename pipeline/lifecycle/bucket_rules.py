"""The bucket's own setup for the lifecycle: versioning on, and with ``managed_by="s3"``
the S3 lifecycle rules equivalent to the tiering policy (the bucket then moves objects by age
itself; the run still bundles small instances, which S3 skips under 128 KB).
"""

from __future__ import annotations

from pipeline.lifecycle.options import TieringOptions
from pipeline.lifecycle.policy import TierPolicy
from pipeline.storage import TieredStore

# Every bundle key starts with this (pipeline/lifecycle/bundles.py, bundle_key).
BUNDLE_PREFIX = "studies/"
# The noncurrent version a tier copy leaves behind holds the same bytes as the current one.
NONCURRENT_DAYS = 1


def lifecycle_rules(policy: TierPolicy, *, key_prefix: str = "", abort_multipart_days: int = 2) -> list[dict]:
    """The bucket lifecycle configuration equivalent to the policy (``managed_by=s3``).

    Originals move by their own age. Bundles are written in the first cold class when their
    study reaches it, so their later transitions count from that day. Noncurrent versions
    (left by any overwrite) expire after a day; abandoned multipart uploads are aborted."""
    tiers = policy.tiers
    rules: list[dict] = [{
        "ID": "relaypacs-tiering",
        "Status": "Enabled",
        "Filter": {"Prefix": key_prefix},
        "Transitions": [{"Days": t.after_days, "StorageClass": t.storage_class} for t in tiers[1:]],
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days},
    }]
    first_cold = policy.first_cold()
    if first_cold is not None and len(tiers) > 2:
        rules.append({
            "ID": "relaypacs-bundles",
            "Status": "Enabled",
            "Filter": {"Prefix": key_prefix + BUNDLE_PREFIX},
            "Transitions": [{"Days": t.after_days - first_cold.after_days, "StorageClass": t.storage_class}
                            for t in tiers[2:]],
        })
    if not rules[0]["Transitions"]:
        del rules[0]["Transitions"]
    return rules


def ensure_bucket_setup(store: TieredStore, options: TieringOptions) -> dict:
    """Versioning on; with ``managed_by=s3`` the lifecycle rules in place. Idempotent."""
    done = {"versioning": False, "lifecycle": False}
    if not store.supports_classes:
        return done
    if not store.versioning_enabled():
        store.enable_versioning()
        done["versioning"] = True
    if options.managed_by == "s3":
        prefix = f"{store.prefix}/" if getattr(store, "prefix", "") else ""
        rules = lifecycle_rules(options.policy, key_prefix=prefix,
                                abort_multipart_days=options.abort_multipart_days)
        if store.get_lifecycle() != rules:
            store.put_lifecycle(rules)
            done["lifecycle"] = True
    return done
