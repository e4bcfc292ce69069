"""Object storage behind one small interface: a local folder (embedded) or S3 (boto3).

The contract and its errors are in ``interface``, the stores in ``folder`` and ``s3``; this
package opens a store from its URL and re-exports the public names, so callers import them
from ``pipeline.storage``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pipeline.storage.folder import FolderStore as FolderStore
from pipeline.storage.interface import READ_BLOCK as READ_BLOCK
from pipeline.storage.interface import CopyResult as CopyResult
from pipeline.storage.interface import ObjectArchived as ObjectArchived
from pipeline.storage.interface import ObjectHead as ObjectHead
from pipeline.storage.interface import ObjectMissing as ObjectMissing
from pipeline.storage.interface import ObjectStore as ObjectStore
from pipeline.storage.interface import TieredStore as TieredStore
from pipeline.storage.interface import check_key as check_key
from pipeline.storage.interface import iter_object as iter_object
from pipeline.storage.s3 import S3Store as S3Store
from pipeline.storage.sparse import HOLE_BLOCK as HOLE_BLOCK
from pipeline.storage.sparse import write_with_holes as write_with_holes


def open_s3_store(url: str, *, endpoint_url: str | None = None, access_key_id: str | None = None,
                  secret_access_key: str | None = None, region: str | None = None) -> S3Store:
    """An S3 store on its own endpoint and credentials (the disaster-recovery bucket), not
    boto3's environment defaults; the bucket is created if missing."""
    import boto3
    from botocore.config import Config

    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ValueError(f"expected an s3:// URL, got {url!r}")
    client = boto3.client(
        "s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None, region_name=region or None,
        config=Config(retries={"max_attempts": 5, "mode": "adaptive"}),
    )
    store = S3Store(parsed.netloc, parsed.path, client=client)
    store.ensure_bucket()
    return store


def open_store(url: str) -> ObjectStore:
    """``file:///abs/path`` or ``file://./rel`` for a folder, ``s3://bucket[/prefix]`` for S3."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FolderStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        store = S3Store(parsed.netloc, parsed.path)
        store.ensure_bucket()
        return store
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")

