"""Getting a built report to people: e-mail over SMTP, with the files attached while they
fit under the size limit, else with time-limited links (S3 presigned URLs).

Errors are split so the task can decide: ``DeliveryRetryable`` (connection refused, a 4xx
reply, a timeout) is retried with backoff; anything else fails the run with its reason.
"""

from __future__ import annotations

import mimetypes
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class DeliveryRetryable(RuntimeError):
    """The mail server may accept the message later."""


class DeliveryFailed(RuntimeError):
    """The message will not be accepted as it is (bad recipient, 5xx)."""


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str) -> Smtp:
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
            raise ValueError("RELAYPACS_SMTP_URL is like smtp://user:pass@host:587?starttls=1")
        query = parse_qs(parsed.query)
        return cls(host=parsed.hostname, port=parsed.port or 25,
                   username=unquote(parsed.username) if parsed.username else None,
                   password=unquote(parsed.password) if parsed.password else None,
                   starttls=query.get("starttls", ["0"])[0] in ("1", "true", "yes"))


@dataclass(frozen=True)
class Attachment:
    filename: str
    path: Path


def compose(sender: str, recipients: Sequence[str], subject: str, body: str,
            attachments: Sequence[Attachment] = ()) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    for item in attachments:
        kind = mimetypes.guess_type(item.filename)[0] or "application/octet-stream"
        main, _, sub = kind.partition("/")
        message.add_attachment(item.path.read_bytes(), maintype=main, subtype=sub, filename=item.filename)
    return message


def send(smtp: Smtp, message: EmailMessage) -> list[str]:
    """Send; returns the recipients the server accepted."""
    recipients = [r.strip() for r in str(message["To"]).split(",") if r.strip()]
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            refused = client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if all(400 <= code < 500 for code in codes):
            raise DeliveryRetryable(f"recipients deferred: {exc.recipients}") from exc
        raise DeliveryFailed(f"recipients refused: {exc.recipients}") from exc
    except smtplib.SMTPResponseException as exc:
        text = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
        if 400 <= exc.smtp_code < 500:
            raise DeliveryRetryable(text) from exc
        raise DeliveryFailed(text) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryRetryable(f"SMTP {smtp.host}:{smtp.port}: {exc}") from exc
    return [r for r in recipients if r not in refused]


# SigV4 query signatures are valid for at most 7 days (S3 refuses longer ones).
PRESIGNED_MAX_SECONDS = 7 * 24 * 3600


def _sigv4_for_presigned(signature_version: str, **_: object) -> str | None:
    # Unless a client sets signature_version, botocore presigns S3 URLs with SigV2
    # (AWSAccessKeyId, Expires: its own 'choose-signer.s3' handler), which S3 has deprecated.
    # Handlers of the more specific event run first: presigned GETs are signed with SigV4.
    return "s3v4-query" if signature_version in ("v4-query", "s3v4-query", "s3-query") else None


def presigned_url(store: object, key: str, ttl_seconds: int) -> str | None:
    """A time-limited GET link (SigV4, X-Amz-Expires) for an object in an S3 store; None for
    other stores."""
    client = getattr(store, "client", None)
    bucket = getattr(store, "bucket", None)
    if client is None or bucket is None:
        return None
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        # The store's own client and credentials; unique_id makes a second registration a no-op.
        events.register_first("choose-signer.s3.GetObject", _sigv4_for_presigned,
                              unique_id="relaypacs-presign-sigv4")
    prefix = getattr(store, "prefix", "")
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": f"{prefix}/{key}" if prefix else key},
        ExpiresIn=min(ttl_seconds, PRESIGNED_MAX_SECONDS))
