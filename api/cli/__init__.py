"""The ``relaypacs`` command line: the ``main`` group, and the registration of the commands and
groups that live one per module beside it (services, db, users, destinations, scp-callers,
deliveries, routes, storage, forecast, upload, demo).

The modules do not import this one, so adding a group is a module plus one line below.
"""

from __future__ import annotations

import click

from api.cli import (
    db,
    deliveries,
    demo,
    destinations,
    forecasts,
    routes,
    scp_callers,
    services,
    storage,
    upload,
    users,
)


@click.group()
def main() -> None:
    """RelayPACS Gateway: clinic DICOM uploads into hospital PACS."""


_REGISTERED = (
    *services.COMMANDS,
    db.db,
    users.users,
    destinations.destinations,
    scp_callers.scp_callers,
    deliveries.deliveries,
    routes.routes,
    storage.storage,
    forecasts.forecast,
    upload.upload,
    demo.demo,
)
for _command in _REGISTERED:
    main.add_command(_command)


if __name__ == "__main__":
    main()
