"""Where Kaon keeps bytes that are not rows: artifact blobs (`blobstore`), sealed with the
workspace's data key (`sealed`), in a folder of the home or an S3 bucket (`s3`)."""

from __future__ import annotations

from pathlib import Path

from kaon.server.storage.blobstore import BlobStore, LocalBlobStore
from kaon.server.storage.s3 import STORE_SCHEME, S3BlobStore


def open_blob_store(location: str | None, local_root: Path, endpoint_url: str | None) -> BlobStore:
    """The blob store settings name: ``s3://bucket/prefix``, else a folder (`local_root`
    when `location` is None)."""
    if location and location.startswith(STORE_SCHEME):
        return S3BlobStore.from_url(location, endpoint_url)
    return LocalBlobStore(Path(location).expanduser() if location else local_root)
