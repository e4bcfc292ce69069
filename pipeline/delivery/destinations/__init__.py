"""Destinations: senders that deliver the original Part-10 bytes of a study to a PACS.

`make_sender(kind, options)` builds one from a destination's stored configuration; every sender
follows the `Sender` protocol and reports one `InstanceOutcome` per instance. See `base` for the
contract and the retryable/final classification shared by all kinds.
"""

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    Sender,
    TransientDestinationError,
    make_sender,
    sender_kinds,
)

__all__ = [
    "InstanceOutcome",
    "OutgoingInstance",
    "Sender",
    "TransientDestinationError",
    "make_sender",
    "sender_kinds",
]
