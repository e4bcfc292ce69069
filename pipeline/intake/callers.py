"""The DICOM listener's allow-list: which calling AE titles, from which networks, may send, and
for which facility.

An entry is a calling AE title, optionally limited to one source network (CIDR), and names the
facility whose batches receive what that caller sends, so one listener serves several
facilities. An association is matched once, at its request:

- entries of the caller's AE title (exact, as DICOM compares AE titles: case kept, padding
  spaces dropped) whose network holds the peer's address, or that have no network;
- of those, the most specific network wins (a /28 over a /16 over "any address"): the same
  factory-default AE title can then belong to two facilities told apart by their networks;
- nothing matches: the caller is unknown and the association is rejected ("calling AE title
  not recognised"), whether the AE title is unknown or it calls from outside its networks.

The caller owns the transaction; changes are audited by the command that makes them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.accounts.users import get_or_create_facility
from pipeline.models import Facility, ScpCaller

# PS3.5 AE VR: up to 16 characters of the default repertoire, no backslash, no control codes;
# leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallerSpecError(ValueError):
    """An allow-list entry that cannot be added or removed as given."""


@dataclass(frozen=True)
class AllowedCaller:
    """What an association's caller was matched to."""

    caller_id: int
    facility_id: int
    facility: str  # the facility's name
    network: str | None


@dataclass(frozen=True)
class UnknownCaller:
    """Why nobody matched: "ae_title" (no entry has it) or "network" (not from its networks)."""

    reason: str


def clean_title(ae_title: str) -> str:
    """An AE title as it is stored and compared; CallerSpecError when it is not one."""
    title = ae_title.strip(" ")
    if not _AE_TITLE.match(title):
        raise CallerSpecError("an AE title is 1-16 printable ASCII characters, no backslash")
    return title


def parse_network(network: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(network.strip(), strict=False)
    except ValueError as exc:
        raise CallerSpecError(f"{network!r} is not a network (CIDR, e.g. 10.20.0.0/16)") from exc


def peer_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address, an IPv4-mapped IPv6 address as the IPv4 one; None if unparsable."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def add_caller(session: Session, ae_title: str, facility: str,
               network: str | None = None) -> ScpCaller:
    """Allow ``ae_title`` (from ``network`` only, if given) to send for ``facility``."""
    title = clean_title(ae_title)
    cidr = str(parse_network(network)) if network else None
    existing = session.scalar(
        select(ScpCaller).where(ScpCaller.ae_title == title, _same_network(cidr)))
    if existing is not None:
        where = f"from {cidr}" if cidr else "from any address"
        raise CallerSpecError(
            f"{title} {where} is allowed already (for {existing.facility.name!r}); remove it first")
    caller = ScpCaller(ae_title=title, network=cidr,
                       facility_id=get_or_create_facility(session, facility).id)
    session.add(caller)
    session.flush()
    return caller


def remove_caller(session: Session, ae_title: str, network: str | None = None) -> ScpCaller:
    """Take the entry of ``ae_title`` for exactly ``network`` (None: the any-address one) off."""
    title = clean_title(ae_title)
    cidr = str(parse_network(network)) if network else None
    caller = session.scalar(
        select(ScpCaller).where(ScpCaller.ae_title == title, _same_network(cidr)))
    if caller is None:
        where = f"from {cidr}" if cidr else "from any address"
        raise CallerSpecError(f"no entry for {title} {where} (see `relaypacs scp-callers list`)")
    session.delete(caller)
    session.flush()
    return caller


def list_callers(session: Session, facility: str | None = None) -> list[ScpCaller]:
    query = select(ScpCaller).join(Facility).order_by(ScpCaller.ae_title, ScpCaller.id)
    if facility is not None:
        query = query.where(Facility.name == facility)
    return list(session.scalars(query))


def match_caller(session: Session, ae_title: str, address: str,
                 facility: str | None = None) -> AllowedCaller | UnknownCaller:
    """The entry an association from ``ae_title`` at ``address`` is allowed by, if any.

    ``facility``: a listener that serves only that facility knows only its entries."""
    title = ae_title.strip(" ")
    query = (select(ScpCaller, Facility.name).join(Facility)
             .where(ScpCaller.ae_title == title))
    if facility is not None:
        query = query.where(Facility.name == facility)
    rows = session.execute(query).all()
    if not rows:
        return UnknownCaller("ae_title")
    peer = peer_address(address)
    best: tuple[int, ScpCaller, str] | None = None
    for caller, facility_name in rows:
        if caller.network is None:
            rank = -1
        else:
            net = ipaddress.ip_network(caller.network)
            if peer is None or peer.version != net.version or peer not in net:
                continue
            rank = net.prefixlen
        if best is None or rank > best[0]:
            best = (rank, caller, facility_name)
    if best is None:
        return UnknownCaller("network")
    _, caller, facility_name = best
    return AllowedCaller(caller.id, caller.facility_id, facility_name, caller.network)


def _same_network(cidr: str | None):  # noqa: ANN202 - a SQLAlchemy clause
    return ScpCaller.network.is_(None) if cidr is None else ScpCaller.network == cidr
