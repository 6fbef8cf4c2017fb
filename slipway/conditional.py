"""Conditional writes on object stores, the primitives that make the registry safe there.

S3 (`If-None-Match: *` and `If-Match: <etag>` on PutObject) and GCS (generation preconditions)
both refuse a write whose condition no longer holds, atomically on the server. Two operations are
enough: create an object only if its name is free, and replace an object only if it is still the
one this writer read. Paths are `bucket/key`, as pyarrow's filesystems name them.
"""

from __future__ import annotations

import time
from typing import Protocol


class ConditionalStore(Protocol):
    """Create-if-absent and compare-and-swap on one object store."""

    def create(self, path: str, data: bytes) -> bool:
        """Write `data` to `path` unless it exists: True if this call created it."""

    def read(self, path: str) -> tuple[bytes, str] | None:
        """The object's content and a token naming this state of it; None if it is missing."""

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        """Write `data` to `path` only if it is still in the state `token` names (None: only if
        it is still missing): True if the write happened."""


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


class S3Conditional:
    """Conditional PutObject (S3 and S3-compatible stores; `AWS_ENDPOINT_URL` picks one)."""

    def __init__(self) -> None:
        import boto3

        self.client = boto3.client("s3")

    def _put(self, path: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = _split(path)
        for attempt in range(20):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
                return True
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "PreconditionFailed":
                    return False
                if code != "ConditionalRequestConflict":  # 409: a racing write is in flight
                    raise
                time.sleep(0.05 * (attempt + 1))
        return False

    def create(self, path: str, data: bytes) -> bool:
        return self._put(path, data, IfNoneMatch="*")

    def read(self, path: str) -> tuple[bytes, str] | None:
        bucket, key = _split(path)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response["ETag"]

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self.create(path, data)
        return self._put(path, data, IfMatch=token)


class GCSConditional:
    """Generation preconditions on Google Cloud Storage (`if_generation_match`)."""

    def __init__(self) -> None:
        from google.cloud import storage

        self.client = storage.Client()

    def _blob(self, path: str):  # noqa: ANN202 (google.cloud.storage.Blob)
        bucket, key = _split(path)
        return self.client.bucket(bucket).blob(key)

    def create(self, path: str, data: bytes) -> bool:
        return self.replace(path, data, None)

    def read(self, path: str) -> tuple[bytes, str] | None:
        from google.api_core.exceptions import PreconditionFailed

        bucket, key = _split(path)
        while True:  # a write between the lookup and the download: look again
            blob = self.client.bucket(bucket).get_blob(key)
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation)
            except PreconditionFailed:
                continue
            return data, str(blob.generation)

    def replace(self, path: str, data: bytes, token: str | None) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._blob(path).upload_from_string(
                data, if_generation_match=0 if token is None else int(token))
            return True
        except PreconditionFailed:
            return False


def conditional_store(scheme: str) -> ConditionalStore:
    """The conditional writer for a root's URI scheme (`s3`, `gs`)."""
    if scheme == "s3":
        return S3Conditional()
    if scheme in ("gs", "gcs"):
        return GCSConditional()
    raise ValueError(f"no conditional writes for {scheme}:// roots; use a local path, s3:// "
                     "or gs:// as storage.root")
