"""Storage lifecycle policy: the storage classes and what S3 bills for them, the tiers
objects go through by age, and the checks that refuse a policy or prices that cannot work.

Pure: no database and no storage. Which objects are due at a given time is decided from the
catalogue by pipeline/lifecycle/planning.py; the cost report prices with the tables here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

KIB = 1024
GIB = 1024**3


@dataclass(frozen=True)
class StorageClassFacts:
    """What S3 documents about a class, as far as tiering and cost depend on it."""

    rank: int  # colder is higher; objects only ever move to a higher rank
    min_days: int  # minimum storage duration: leaving earlier is billed as if kept this long
    min_billable_bytes: int  # smaller objects are billed as this size
    # Archive classes keep 32 KiB of index per object at the class price and 8 KiB of
    # name and metadata at the STANDARD price.
    overhead_bytes: int
    overhead_standard_bytes: int
    needs_restore: bool  # a GET fails until a restore made a temporary copy


CLASSES: dict[str, StorageClassFacts] = {
    "STANDARD": StorageClassFacts(0, 0, 0, 0, 0, False),
    "STANDARD_IA": StorageClassFacts(1, 30, 128 * KIB, 0, 0, False),
    "ONEZONE_IA": StorageClassFacts(2, 30, 128 * KIB, 0, 0, False),
    "GLACIER_IR": StorageClassFacts(3, 90, 128 * KIB, 0, 0, False),
    "GLACIER": StorageClassFacts(4, 90, 0, 32 * KIB, 8 * KIB, True),
    "DEEP_ARCHIVE": StorageClassFacts(5, 180, 0, 32 * KIB, 8 * KIB, True),
}

# us-east-1 list prices, USD per GB-month (2024); override with RELAYPACS_STORAGE_PRICES.
DEFAULT_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}

# us-east-1 request and retrieval prices (2024). Not settings: unlike storage prices they
# are the same in most regions and only scale the fees lines of the report.
# USD per 1,000 requests that write an object into a class: PUT, COPY, lifecycle transition.
WRITE_REQUEST_PRICES: dict[str, float] = {
    "STANDARD": 0.005,
    "STANDARD_IA": 0.01,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.02,
    "GLACIER": 0.03,
    "DEEP_ARCHIVE": 0.05,
}
# USD per 1,000 GET requests.
GET_REQUEST_PRICES: dict[str, float] = {
    "STANDARD": 0.0004,
    "STANDARD_IA": 0.001,
    "ONEZONE_IA": 0.001,
    "GLACIER_IR": 0.01,
    "GLACIER": 0.0004,
    "DEEP_ARCHIVE": 0.0004,
}
# USD per GB read straight from a class that needs no restore (STANDARD reads are free).
RETRIEVAL_PRICES: dict[str, float] = {"STANDARD_IA": 0.01, "ONEZONE_IA": 0.01, "GLACIER_IR": 0.03}
# Restores of archive classes: (USD per GB, USD per 1,000 restore requests) by restore tier.
RESTORE_PRICES: dict[tuple[str, str], tuple[float, float]] = {
    ("GLACIER", "Expedited"): (0.03, 10.0),
    ("GLACIER", "Standard"): (0.01, 0.05),
    ("GLACIER", "Bulk"): (0.0, 0.0),
    ("DEEP_ARCHIVE", "Standard"): (0.02, 0.10),
    ("DEEP_ARCHIVE", "Bulk"): (0.0025, 0.025),
}

# The shipped policy. A 30-day hot tier, then GLACIER_IR (millisecond reads like STANDARD,
# $0.03/GB to read) for the rest of the first year, then DEEP_ARCHIVE. Priors are mostly read
# within weeks of a study, and the gateway is the archive behind the PACS, not what
# radiologists read from, so little is read back after day 30. With STANDARD for 90 days a
# steady intake keeps a quarter of a year's bytes hot on day 365, which caps the one-year
# saving near 63%. ISSUE_TIERS is that 90/365 policy, one setting away
# (RELAYPACS_STORAGE_TIERS): the tests and the benchmark compare the two.
DEFAULT_TIERS: tuple[tuple[str, int], ...] = (("STANDARD", 0), ("GLACIER_IR", 30), ("DEEP_ARCHIVE", 365))
ISSUE_TIERS: tuple[tuple[str, int], ...] = (("STANDARD", 0), ("GLACIER_IR", 90), ("DEEP_ARCHIVE", 365))

# Share of the bytes in millisecond-access cold classes (IA, GLACIER_IR) read back per month,
# for the report's retrieval fees: a modelled rate (re-forwards to a new or rebuilt PACS,
# exports), since such reads leave no trace in the catalogue. 0.02 = each cold byte read once
# in about four years. Override with RELAYPACS_STORAGE_COLD_READS_PER_MONTH.
DEFAULT_COLD_READS_PER_MONTH = 0.02

# Rewritten renditions are deleted this many days after they were made (rebuilt from the
# original on demand): they must never reach a cold class, where deleting them would bill
# the class's minimum duration.
DEFAULT_RENDITION_DAYS = 7

# Instances below this size go cold inside their study's bundle instead of one by one. S3
# itself skips objects under 128 KiB, but the threshold is set by the request fees: each
# object costs one transition request into GLACIER_IR ($0.02 per 1,000) and another into
# DEEP_ARCHIVE ($0.05), while a 0.5 MB CT or MR slice saves only ~$0.0000015 a month between
# those two classes, so its DEEP_ARCHIVE request takes ~3 years to pay back and its 40 KiB
# archive overhead adds 8% to its bytes. Bundled, a study's slices cost one request per move.
# Above a few MB an object repays its requests within a month or two and is moved on its own
# by a server-side copy (no bytes through the worker).
DEFAULT_BUNDLE_BELOW = 8 * 1024 * 1024
# A study's bundle is split into archives of at most this many bytes of members: bounds the
# worker's spool file and what one restore of a single instance brings back.
DEFAULT_BUNDLE_MAX_BYTES = 2 * GIB

# Restore tiers (S3 "GlacierJobParameters.Tier") and how long S3 says they take, in hours.
RESTORE_HOURS: dict[tuple[str, str], float] = {
    ("GLACIER", "Expedited"): 5 / 60,
    ("GLACIER", "Standard"): 5.0,
    ("GLACIER", "Bulk"): 12.0,
    ("DEEP_ARCHIVE", "Standard"): 12.0,
    ("DEEP_ARCHIVE", "Bulk"): 48.0,
}
RESTORE_TIERS = ("Expedited", "Standard", "Bulk")

# S3 lifecycle rules cannot move an object to an IA class before it is 30 days old.
IA_MIN_AGE_DAYS = 30


class PolicyError(ValueError):
    """The tiering policy or the prices cannot be used as configured."""


def readable(storage_class: str) -> bool:
    return not CLASSES[storage_class].needs_restore


def restore_hours(storage_class: str, tier: str) -> float:
    """Hours S3 documents for a restore; a class that needs none answers 0."""
    if readable(storage_class):
        return 0.0
    if (storage_class, tier) not in RESTORE_HOURS:
        raise PolicyError(f"restore tier {tier!r} is not offered for {storage_class}")
    return RESTORE_HOURS[(storage_class, tier)]


@dataclass(frozen=True)
class Tier:
    storage_class: str
    after_days: int  # age (days since stored) from which objects belong in this class


@dataclass(frozen=True)
class TierPolicy:
    """Ordered tiers: STANDARD from day 0, then ever colder classes at increasing ages."""

    tiers: tuple[Tier, ...]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, int]]) -> TierPolicy:
        policy = cls(tuple(Tier(c, int(d)) for c, d in pairs))
        policy.validate()
        return policy

    def validate(self) -> None:
        if not self.tiers:
            raise PolicyError("the tiering policy has no tier")
        for tier in self.tiers:
            if tier.storage_class not in CLASSES:
                known = ", ".join(CLASSES)
                raise PolicyError(f"unknown storage class {tier.storage_class!r} (known: {known})")
        first = self.tiers[0]
        if first.storage_class != "STANDARD" or first.after_days != 0:
            raise PolicyError("the first tier must be STANDARD from day 0 (new objects land there)")
        for warmer, colder in zip(self.tiers, self.tiers[1:], strict=False):
            if colder.after_days <= warmer.after_days:
                raise PolicyError(
                    f"days must increase: {colder.storage_class} at {colder.after_days} d comes "
                    f"after {warmer.storage_class} at {warmer.after_days} d")
            if CLASSES[colder.storage_class].rank <= CLASSES[warmer.storage_class].rank:
                raise PolicyError(
                    f"{colder.storage_class} is not colder than {warmer.storage_class}: objects "
                    "only move to colder classes")
            stay = colder.after_days - warmer.after_days
            minimum = CLASSES[warmer.storage_class].min_days
            if stay < minimum:
                raise PolicyError(
                    f"{warmer.storage_class} is kept {stay} d but its minimum storage duration is "
                    f"{minimum} d (leaving earlier is billed as {minimum} d)")
            if colder.storage_class in ("STANDARD_IA", "ONEZONE_IA") and colder.after_days < IA_MIN_AGE_DAYS:
                raise PolicyError(f"{colder.storage_class} needs objects at least {IA_MIN_AGE_DAYS} d old")

    def class_at(self, age: timedelta) -> str:
        """The class an object of this age belongs in."""
        current = self.tiers[0].storage_class
        for tier in self.tiers:
            if age >= timedelta(days=tier.after_days):
                current = tier.storage_class
        return current

    def first_cold(self) -> Tier | None:
        return self.tiers[1] if len(self.tiers) > 1 else None

    def describe(self) -> str:
        parts = []
        for tier, nxt in zip(self.tiers, [*self.tiers[1:], None], strict=False):
            until = f"{tier.after_days}-{nxt.after_days} d" if nxt else f"from {tier.after_days} d"
            parts.append(f"{tier.storage_class} {until}")
        return ", ".join(parts)


def check_rendition_days(policy: TierPolicy, days: int) -> int:
    """Renditions expire while still in STANDARD (``managed_by=s3`` moves them by age too)."""
    if days < 1:
        raise PolicyError("renditions must be kept at least 1 day (deliveries retry from them)")
    first = policy.first_cold()
    if first is not None and days >= first.after_days:
        raise PolicyError(
            f"renditions kept {days} d would reach {first.storage_class} at {first.after_days} d; "
            f"expire them earlier (deleting a cold object bills its minimum duration)")
    return days


def check_read_fraction(fraction: float) -> float:
    """A share of the cold bytes read per month: 0.02 is 2%; above 1, bytes are read repeatedly."""
    if not 0 <= fraction <= 10:
        raise PolicyError(f"cold reads per month must be a share between 0 and 10, not {fraction}")
    return float(fraction)


def parse_prices(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Defaults overridden by ``pairs``; unknown classes and negative prices are refused."""
    prices = dict(DEFAULT_PRICES)
    for name, price in pairs:
        if name not in CLASSES:
            raise PolicyError(f"price for unknown storage class {name!r}")
        if price < 0:
            raise PolicyError(f"price for {name} is negative")
        prices[name] = float(price)
    return prices


def rank(storage_class: str) -> int:
    return CLASSES[storage_class].rank
