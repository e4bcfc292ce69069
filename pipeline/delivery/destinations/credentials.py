"""Destination secrets at rest: the password and bearer token of a destination are kept as one
Fernet token (cryptography: AES-128-CBC with HMAC-SHA256, authenticated) in
``destinations.sealed_secrets``; ``options`` never holds them, so whatever shows or logs
options shows no secret. They are decrypted only where a sender is built (``sender_options``).

Keys come from ``RELAYPACS_SECRET_KEY`` (settings ``secret_keys``), newest first: the first
encrypts, every one decrypts (``MultiFernet``), so a key is rotated by putting the new one in
front, re-encrypting every row (``rotate``, ``relaypacs destinations rotate-key``) and then
dropping the old one. With the embedded SQLite database and no key set, a key is generated once
into ``<var dir>/secret.key`` (mode 0600), beside the database it protects: the demo needs no
configuration. With any other database the key must be set (every process must share it), and
only when a secret is stored or read: a gateway without passwords needs no key at all.
"""

from __future__ import annotations

import binascii
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from config import Settings
from pipeline.models import Destination

SECRET_FIELDS = ("password", "token")
KEY_FILE = "secret.key"
NEW_KEY_HINT = "`relaypacs destinations new-key` prints a new one"


class SecretKeyError(RuntimeError):
    """No usable key: unset where one is needed, malformed, or not the one a row was sealed with."""


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def file_key(var_dir: Path) -> str:
    """The embedded gateway's key: read from ``var_dir/secret.key``, created (0600) if absent."""
    path = Path(var_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(new_key() + "\n")
    return path.read_text().strip()


class SecretBox:
    """Seals and opens destination secrets with the configured keys, resolved on first use."""

    def __init__(self, keys: Sequence[str] = (), *, key_file_dir: Path | None = None) -> None:
        self._keys = tuple(keys)
        self._key_file_dir = key_file_dir
        self._fernet: MultiFernet | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        embedded = settings.database_url.startswith("sqlite")
        return cls(settings.secret_keys, key_file_dir=settings.var_dir if embedded else None)

    def _multi(self) -> MultiFernet:
        if self._fernet is None:
            keys = self._keys
            if not keys:
                if self._key_file_dir is None:
                    raise SecretKeyError(
                        "RELAYPACS_SECRET_KEY is not set: destination passwords and tokens are "
                        "stored encrypted with it, and every gateway process needs the same key; "
                        f"{NEW_KEY_HINT}")
                keys = (file_key(self._key_file_dir),)
            try:
                self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])
            except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
                raise SecretKeyError(
                    "RELAYPACS_SECRET_KEY: each comma-separated key is 32 url-safe "
                    f"base64-encoded bytes; {NEW_KEY_HINT}") from exc
        return self._fernet

    def seal(self, secrets: dict[str, str]) -> str:
        return self._multi().encrypt(json.dumps(secrets, sort_keys=True).encode()).decode("ascii")

    def open(self, sealed: str) -> dict[str, str]:
        try:
            return json.loads(self._multi().decrypt(sealed.encode("ascii")))
        except InvalidToken:
            raise SecretKeyError(
                "a destination's secrets do not open with RELAYPACS_SECRET_KEY: the key they "
                "were sealed with is missing from it") from None

    def reseal(self, sealed: str) -> str:
        """The same secrets under the first key (MultiFernet.rotate)."""
        try:
            return self._multi().rotate(sealed.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretKeyError(
                "a destination's secrets do not open with any key of RELAYPACS_SECRET_KEY: "
                "put the key they were sealed with after the new one") from None


def split_secrets(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(options without secrets, the secrets); empty secrets are dropped."""
    plain = {k: v for k, v in options.items() if k not in SECRET_FIELDS}
    secrets = {k: str(options[k]) for k in SECRET_FIELDS if options.get(k)}
    return plain, secrets


def seal_into(destination: Destination, secrets: dict[str, str], box: SecretBox) -> None:
    destination.sealed_secrets = box.seal(secrets) if secrets else None


def sender_options(destination: Destination, box: SecretBox) -> dict[str, Any]:
    """The options a sender is built from, secrets included: call it only to build a sender."""
    options = dict(destination.options or {})
    if destination.sealed_secrets:
        options.update(box.open(destination.sealed_secrets))
    return options


def rotate(session: Session, box: SecretBox) -> int:
    """Re-encrypt every stored secret under the first key; the number of destinations."""
    count = 0
    for destination in session.scalars(
            select(Destination).where(Destination.sealed_secrets.is_not(None))
            .order_by(Destination.id).with_for_update()):
        destination.sealed_secrets = box.reseal(destination.sealed_secrets)
        count += 1
    session.flush()
    return count
