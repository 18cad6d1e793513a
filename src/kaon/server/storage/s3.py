"""An S3-compatible bucket as a blob store (AWS S3, MinIO, Ceph, R2: anything that speaks
the S3 API at ``KAON_S3_ENDPOINT_URL``).

Keys become object names under a prefix (``<prefix>/<workspace id>/<sha256>``). A value
is sent as one multipart upload, a part per 8 MiB, and completed only when every part is
in, so readers see the whole object or none (an upload that fails is aborted). Credentials
come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile,
an instance role); values are already encrypted, so the bucket needs no server-side key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kaon.server.storage.blobstore import CHUNK, check_key

PART = 8 * CHUNK  # S3's parts are at least 5 MiB, but for the last
STORE_SCHEME = "s3://"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"an artifact store must be s3://BUCKET[/PREFIX], not {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3BlobStore:
    """Blob values as objects of one bucket, under a prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3  # the `s3` extra: imported only where a bucket is configured

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url)

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3BlobStore:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        name = self._name(key)
        upload = self._s3.create_multipart_upload(Bucket=self.bucket, Key=name)
        upload_id = upload["UploadId"]
        try:
            parts, size = self._send_parts(name, upload_id, chunks)
            self._s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return size

    def _send_parts(
        self, name: str, upload_id: str, chunks: Iterable[bytes]
    ) -> tuple[list[dict[str, Any]], int]:
        parts: list[dict[str, Any]] = []
        size = 0
        buf = bytearray()

        def send(data: bytes) -> None:
            number = len(parts) + 1
            answer = self._s3.upload_part(
                Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        for chunk in chunks:
            buf += chunk
            size += len(chunk)
            if len(buf) >= PART:
                send(bytes(buf))
                buf.clear()
        if buf or not parts:
            send(bytes(buf))
        return parts, size

    def get(self, key: str) -> Iterator[bytes]:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))
        except self._s3.exceptions.NoSuchKey:
            raise KeyError(key) from None
        return _stream(answer["Body"])

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])[len(base) :]

    def entries(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                modified: datetime = item["LastModified"]
                yield str(item["Key"])[len(base) :], modified.astimezone(UTC)


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
