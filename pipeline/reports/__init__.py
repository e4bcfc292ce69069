"""Radiology reports on the studies the gateway delivered (not the QA managers' scheduled
exports, which are pipeline/exports): reading report documents back from the PACS
(``poll``, ``dicomweb``, ``documents``), reports written here by radiologists (``manual``),
status and its history (``status``), and the listing queries (``listing``).

The gateway's own addenda (a consult's answer, sent back to the PACS as an Encapsulated PDF)
carry SOP Instance UIDs under ``ADDENDUM_UID_PREFIX``, so the report poll recognises them and
never takes them for new reports.
"""

from __future__ import annotations

import secrets

# The gateway's own UID root for addenda: 2.25 is the UUID arc (PS3.5 B.2), so a random UUID
# under it is ours without a registered organisation root; ".1." marks addenda under it.
# 44 characters, leaving 20 for the serial part of a 64-character UID.
ADDENDUM_UID_PREFIX = "2.25.35536220962242224587112654980210967775.1."


def is_own_addendum(sop_instance_uid: str | None) -> bool:
    return bool(sop_instance_uid) and sop_instance_uid.startswith(ADDENDUM_UID_PREFIX)


def new_addendum_uid() -> str:
    """A new UID under ``ADDENDUM_UID_PREFIX`` (random digits, no leading zero, 64 chars max)."""
    room = 64 - len(ADDENDUM_UID_PREFIX)
    return ADDENDUM_UID_PREFIX + str(secrets.randbelow(9 * 10 ** (room - 1)) + 10 ** (room - 1))
