"""The bucket lifecycle rules written for ``managed_by=s3`` (pipeline/lifecycle/bucket_rules.py)."""

from __future__ import annotations

from pipeline.lifecycle import bucket_rules
from pipeline.lifecycle.policy import TierPolicy
from tests.unit.lifecycle.helpers import NINETY


def test_lifecycle_rules_for_managed_by_s3():
    rules = bucket_rules.lifecycle_rules(TierPolicy.of(NINETY), key_prefix="gw/", abort_multipart_days=3)
    main, bundle = rules
    assert main["Filter"] == {"Prefix": "gw/"}
    assert main["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER_IR"},
                                   {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert main["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert main["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    # Bundles are born in GLACIER_IR at study age 90: DEEP_ARCHIVE 275 days later.
    assert bundle["Filter"] == {"Prefix": "gw/studies/"}
    assert bundle["Transitions"] == [{"Days": 275, "StorageClass": "DEEP_ARCHIVE"}]
