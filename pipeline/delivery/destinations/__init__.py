"""Destinations: senders that deliver the original Part-10 bytes of a study to a PACS.

This package owns the factory: `make_sender(kind, options)` builds the sender for a
destination's stored configuration, one kind ("stowrs", "dimse", "folder") per module;
`sender_for(destination, secret_box)` does it for a row, the one place its sealed password or
token is decrypted (`credentials`). Every
sender follows the `Sender` protocol of `base` and reports one `InstanceOutcome` per instance;
`base` also holds the retryable/final classification shared by all kinds and imports no sender.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    Sender,
    TransientDestinationError,
)

if TYPE_CHECKING:
    from pipeline.delivery.destinations.credentials import SecretBox
    from pipeline.models import Destination

__all__ = [
    "InstanceOutcome",
    "OutgoingInstance",
    "Sender",
    "SenderFactory",
    "TransientDestinationError",
    "make_sender",
    "sender_for",
    "sender_kinds",
]

# Each factory imports its sender module when called, so that a STOW-only deployment never
# imports pynetdicom and importing the contract (renditions, forwarding) never pulls in requests.
SenderFactory = Callable[[dict[str, Any], float, int], Sender]


def _stowrs(options: dict[str, Any], timeout: float, batch_size: int) -> Sender:
    from pipeline.delivery.destinations.stowrs import StowRsSender

    return StowRsSender(
        _required(options, "url"),
        user=options.get("user"),
        password=options.get("password"),
        token=options.get("token"),
        verify=options.get("verify", True),
        timeout=timeout,
        batch_size=batch_size,
    )


def _dimse(options: dict[str, Any], timeout: float, batch_size: int) -> Sender:
    from pipeline.delivery.destinations.dimse import DimseSender

    return DimseSender(
        _required(options, "aet"),
        _required(options, "host"),
        int(_required(options, "port")),
        calling_aet=options.get("calling_aet") or "RELAYPACS",
        timeout=timeout,
    )


def _folder(options: dict[str, Any], timeout: float, batch_size: int) -> Sender:
    from pipeline.delivery.destinations.folder import FolderSender

    return FolderSender(_required(options, "path"))


_FACTORIES: dict[str, SenderFactory] = {
    "stowrs": _stowrs,
    "dimse": _dimse,
    "folder": _folder,
}


def _required(options: dict[str, Any], key: str) -> Any:
    value = options.get(key)
    if value in (None, ""):
        raise ValueError(f"destination option {key!r} is required")
    return value


def sender_kinds() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def make_sender(
    kind: str, options: dict[str, Any], *, timeout: float = 120.0, batch_size: int = 40
) -> Sender:
    """Build the sender for a destination row: kind "stowrs", "dimse" or "folder"."""
    try:
        factory = _FACTORIES[kind]
    except KeyError:
        raise ValueError(
            f"unknown destination kind {kind!r}; expected one of {', '.join(_FACTORIES)}"
        ) from None
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return factory(options, timeout, batch_size)


def sender_for(destination: Destination, secret_box: SecretBox, *, timeout: float = 120.0,
               batch_size: int = 40) -> Sender:
    """The sender of a destination row, its secrets decrypted into the sender and nowhere else."""
    from pipeline.delivery.destinations.credentials import sender_options

    return make_sender(destination.kind, sender_options(destination, secret_box),
                       timeout=timeout, batch_size=batch_size)
