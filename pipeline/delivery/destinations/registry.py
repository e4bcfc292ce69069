"""Destinations as rows: validated specs for the STOW-RS, DIMSE and folder kinds.

A password or bearer token never goes into ``options``: it is sealed with the secret keys
(``credentials``) into its own column.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.accounts.users import get_or_create_facility
from pipeline.delivery.destinations.credentials import SecretBox, seal_into, split_secrets
from pipeline.models import Destination

_DIMSE = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class DestinationSpecError(ValueError):
    pass


def add_destination(
    session: Session,
    name: str,
    *,
    stow_url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    bearer: str | None = None,
    dimse: str | None = None,
    folder: str | None = None,
    facility: str | None = None,
    secret_box: SecretBox | None = None,
) -> Destination:
    """Validate and add a destination; ``secret_box`` seals a password or token (required then)."""
    if not _NAME.match(name):
        raise DestinationSpecError("name: letters, digits, '_', '.', '-' (at most 100)")
    if sum(x is not None for x in (stow_url, dimse, folder)) != 1:
        raise DestinationSpecError("give exactly one of --stow-url, --dimse, --folder")
    if session.scalar(select(Destination).where(Destination.name == name)):
        raise DestinationSpecError(f"destination {name!r} exists already")
    if stow_url is not None:
        parsed = urlparse(stow_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DestinationSpecError("--stow-url must be an http(s) URL")
        options: dict = {"url": stow_url.rstrip("/")}
        if user:
            options.update(user=user, password=password or "")
        if bearer:
            options["token"] = bearer
        kind = "stowrs"
    elif dimse is not None:
        match = _DIMSE.match(dimse)
        if not match or not 0 < int(match["port"]) < 65536:
            raise DestinationSpecError("--dimse must be AET@HOST:PORT")
        options = {"aet": match["aet"], "host": match["host"], "port": int(match["port"])}
        kind = "dimse"
    else:
        options = {"path": str(Path(folder).absolute())}
        kind = "folder"
    options, secrets = split_secrets(options)
    if secrets and secret_box is None:
        raise ValueError("a password or token is stored only sealed: pass a secret_box")
    facility_id = get_or_create_facility(session, facility).id if facility else None
    dest = Destination(name=name, kind=kind, options=options, facility_id=facility_id)
    if secrets:
        seal_into(dest, secrets, secret_box)  # type: ignore[arg-type]
    session.add(dest)
    session.flush()
    return dest
