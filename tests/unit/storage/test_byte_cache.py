"""The worker host's byte cache: only immutable keys, filled on write and on a full read,
emptied on delete, bounded in size."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.storage import FolderStore
from pipeline.storage.byte_cache import ByteCache, CachedStore, cacheable

ORIGINAL = "2026/11/24/upload-0a1b/original.dcm"
CHUNK = "2026/11/24/upload-0a1b/chunks/000000000000000"


def make(tmp_path: Path, max_bytes: int = 10_000_000) -> tuple[CachedStore, FolderStore, ByteCache]:
    inner = FolderStore(tmp_path / "objects")
    cache = ByteCache(tmp_path / "cache", max_bytes)
    return CachedStore(inner, cache), inner, cache


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path


def test_only_immutable_keys_are_cacheable():
    assert cacheable(ORIGINAL)
    assert cacheable("2026/11/24/upload-0a1b/renditions/" + "ab" * 32 + ".dcm")
    assert not cacheable(CHUNK)
    assert not cacheable("bundles/study-1/bundle.zip")
    assert not cacheable(ORIGINAL, size=65 * 1024 * 1024)


def test_written_original_is_read_from_the_local_copy(tmp_path):
    store, inner, cache = make(tmp_path)
    store.put_file(ORIGINAL, write(tmp_path, b"DICM-bytes"))
    inner.delete(ORIGINAL)  # behind the cache's back: only the local copy can answer now
    with store.open(ORIGINAL) as body:
        assert body.read() == b"DICM-bytes"
    assert cache.hits == 1


def test_chunks_are_never_kept(tmp_path):
    store, inner, cache = make(tmp_path)
    store.put_file(CHUNK, write(tmp_path, b"part"))
    with store.open(CHUNK) as body:
        assert body.read() == b"part"
    assert not cache.path_for(CHUNK).exists()
    assert cache.hits == 0


def test_a_full_read_fills_the_cache_and_a_partial_one_does_not(tmp_path):
    store, inner, cache = make(tmp_path)
    inner.put_file(ORIGINAL, write(tmp_path, b"x" * 5000))
    with store.open(ORIGINAL) as body:
        body.read(100)
    assert not cache.path_for(ORIGINAL).exists()
    with store.open(ORIGINAL) as body:
        while body.read(1000):
            pass
    assert cache.path_for(ORIGINAL).read_bytes() == b"x" * 5000
    with store.open(ORIGINAL) as body:
        assert body.read() == b"x" * 5000
    assert cache.hits == 1


def test_delete_through_the_store_drops_the_local_copy(tmp_path):
    store, inner, cache = make(tmp_path)
    store.put_file(ORIGINAL, write(tmp_path, b"gone soon"))
    store.delete(ORIGINAL)
    assert not cache.path_for(ORIGINAL).exists()


def test_local_names_never_contain_the_key(tmp_path):
    _, _, cache = make(tmp_path)
    path = cache.path_for("../../etc/passwd/original.dcm")
    assert path.resolve().is_relative_to((tmp_path / "cache").resolve())
    assert "passwd" not in str(path)


def test_trim_removes_the_oldest_files_first(tmp_path):
    _, _, cache = make(tmp_path, max_bytes=10_000)
    for i in range(6):
        key = f"2026/11/24/upload-{i:04x}/original.dcm"
        cache.put_bytes(key, b"y" * 3000)
        os.utime(cache.path_for(key), (1_000_000 + i, 1_000_000 + i))
    assert cache.trim() == 4  # 18,000 bytes down to at most 8,000
    kept = [i for i in range(6) if cache.path_for(f"2026/11/24/upload-{i:04x}/original.dcm").exists()]
    assert kept == [4, 5]


def test_other_calls_reach_the_wrapped_store(tmp_path):
    store, inner, _ = make(tmp_path)
    store.put_file(ORIGINAL, write(tmp_path, b"abc"))
    assert store.size(ORIGINAL) == 3
    assert store.supports_classes is False
