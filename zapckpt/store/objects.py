"""An S3-compatible object store, where a fleet keeps its packs and volume streams off the hosts
(any S3 service through boto3; the tests use SeaweedFS). Under the store's prefix:

    zapckpt-store.json   the fleet the store belongs to (a store of another fleet is refused)
    packs/<ab>/<name>    one pack file each, immutable (ab: the name's first two characters, so
                         that writes spread over 256 key prefixes, as S3's per-prefix rates want)
    volumes/<id>         a checkpoint's volume: a zstd-compressed btrfs send stream

Credentials are found the way boto3 and the AWS CLI find them (AWS_ACCESS_KEY_ID and friends,
~/.aws/credentials, ~/.aws/config); the endpoint of a non-AWS service is kept in the catalog. Every
failure is a StoreError of one line that says what it means and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from zapckpt.common.errors import UsageError
from zapckpt.store import StoreError

MARKER = "zapckpt-store.json"
PACKS, VOLUMES = "packs/", "volumes/"
PART = 8 << 20  # multipart part size and threshold: boto3's own, parts going up in parallel
CONCURRENCY = 10
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StoreURL:
    bucket: str
    prefix: str  # "" or "a/b/" (ends with a slash)
    endpoint: str | None = None

    @property
    def text(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


class DigestMismatch(StoreError):
    """An object is not what was stored (its sha256 is not the catalog's)."""


def pack_key(name: str) -> str:
    return f"{PACKS}{name[:2]}/{name}"


def pack_of_key(key: str) -> str | None:
    """The pack a key under packs/ holds (None for anything else)."""
    parts = key.split("/")
    return parts[2] if len(parts) == 3 and parts[0] + "/" == PACKS and parts[2][:2] == parts[1] else None


def parse_url(text: str, endpoint: str | None = None) -> StoreURL:
    """s3://BUCKET[/PREFIX] (and --s3-endpoint URL for a service other than AWS)."""
    m = re.fullmatch(r"s3://([^/]+)(/.*)?", text.strip())
    if m is None:
        raise UsageError(f"bad store URL {text!r}: expected s3://BUCKET/PREFIX (the default, a directory of this "
                         f"host, needs no --store)")  # fmt: skip
    bucket, prefix = m.group(1), (m.group(2) or "").strip("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(f"bad bucket name {bucket!r} in {text!r}: 3-63 lowercase letters, digits, '.' and '-'")
    if prefix and (".." in prefix.split("/") or "//" in prefix):
        raise UsageError(f"bad prefix {prefix!r} in {text!r}")
    if endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
        raise UsageError(f"bad --s3-endpoint {endpoint!r}: expected http(s)://HOST[:PORT]")
    return StoreURL(bucket, prefix + "/" if prefix else "", endpoint)


def _client(url: StoreURL):
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                 s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                 response_checksum_validation="when_required")  # fmt: skip
    return boto3.session.Session().client("s3", endpoint_url=url.endpoint, config=cfg)


def explain(e: BaseException, url: StoreURL, what: str) -> StoreError:
    """A botocore failure as one line: what it means, and the fix."""
    from botocore import exceptions as bx

    where = url.endpoint or "AWS S3"
    if isinstance(e, bx.NoCredentialsError):
        return StoreError(f"no credentials for the image store {url.text}: set AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY, or write them in ~/.aws/credentials")  # fmt: skip
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError)):
        return StoreError(f"cannot reach the image store at {where} ({what}): {e} (is it running, and --s3-endpoint "
                          f"right?)")  # fmt: skip
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code, msg = str(err.get("Code", "")), err.get("Message") or ""
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or (code == "404" and what.startswith("the bucket")):
            return StoreError(f"the bucket {url.bucket!r} does not exist at {where}: create it (e.g. `aws "
                              f"--endpoint-url {where} s3 mb s3://{url.bucket}`); zap makes only its objects")  # fmt: skip
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                    "ExpiredToken") or status == 403:  # fmt: skip
            return StoreError(f"the image store {url.text} refused zap's credentials for {what} ({code or status}: "
                              f"{msg or 'forbidden'}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                              f"~/.aws/credentials")  # fmt: skip
        if code in ("NoSuchKey", "404") or status == 404:
            return StoreError(f"{what} is missing from the image store {url.text} (deleted behind zap's back? "
                              f"`zap verify` lists what it affects)")  # fmt: skip
        return StoreError(f"the image store {url.text} failed {what}: {code or status} {msg}".rstrip())
    if isinstance(e, bx.BotoCoreError):
        return StoreError(f"the image store {url.text} failed {what}: {e}")
    if isinstance(e, OSError):
        return StoreError(f"the image store {url.text} failed {what}: {e.strerror or e}")
    return StoreError(f"the image store {url.text} failed {what}: {e}")


class ObjectStore:
    def __init__(self, url: StoreURL):
        self.url = url
        self._c = None
        self._making = threading.Lock()
        self._warming = None

    @property
    def client(self):
        if self._c is None:
            with self._making:
                if self._c is None:
                    self._c = _client(self.url)
        return self._c

    def warm(self, background: bool = False) -> None:
        """Make the client now (boto3's import and set-up take ~0.2 s): before a freeze, so that
        the work after the thaw is the upload alone; or, in the background, while a restore
        reads the catalog. A failure here is met again by the first real call."""
        if not background:
            self.client
            return
        if self._c is None and self._warming is None:

            def run():
                try:
                    self.client
                except Exception:  # noqa: BLE001 - said by the call that needs the client
                    pass

            self._warming = threading.Thread(target=run, name="zap-s3-client", daemon=True)
            self._warming.start()

    def key(self, name: str) -> str:
        return self.url.prefix + name

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - botocore's many error types, one line each
            if type(e).__module__.split(".")[0] not in ("botocore", "boto3", "s3transfer") and not isinstance(e, OSError):
                raise
            raise explain(e, self.url, what) from None

    def _transfer(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY,
                              use_threads=True)  # fmt: skip

    # --- the store as a whole -----------------------------------------------------------------
    def check(self, fleet: str, create: bool) -> None:
        """The bucket answers and the prefix holds this fleet's store (made there if create and empty)."""
        self._call(f"the bucket {self.url.bucket!r}", self.client.head_bucket, Bucket=self.url.bucket)
        doc = self.get_json(MARKER)
        if doc is None:
            if not create:
                raise StoreError(f"{self.url.text} holds no zap image store (its {MARKER} is missing)")
            self.put_bytes(MARKER, json.dumps({"format": 1, "fleet": fleet}).encode())
            return
        if doc.get("fleet") != fleet:
            raise StoreError(f"{self.url.text} holds the image store of another fleet (id {doc.get('fleet')}, this "
                             f"catalog's is {fleet}): give another bucket or prefix")  # fmt: skip

    # --- objects ------------------------------------------------------------------------------
    def put_file(self, name: str, path: Path) -> None:
        self._call(f"the upload of {name}", self.client.upload_file, str(path), self.url.bucket, self.key(name),
                   Config=self._transfer())  # fmt: skip

    def put_stream(self, name: str, stream: BinaryIO) -> None:
        self._call(f"the upload of {name}", self.client.upload_fileobj, stream, self.url.bucket, self.key(name),
                   Config=self._transfer())  # fmt: skip

    def put_bytes(self, name: str, data: bytes) -> None:
        self._call(f"the upload of {name}", self.client.put_object, Bucket=self.url.bucket, Key=self.key(name), Body=data)

    def get_file(self, name: str, path: Path, digest: str | None = None) -> None:
        """Download to path (0600), through a temporary name: a copy half-written is never seen.
        With digest, the copy must have that sha256, hashed as it arrives (one streamed GET
        and no second read: twice as fast here as parallel ranged GETs and a hash afterwards)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            h = hashlib.sha256()
            with open(fd, "wb") as f:
                body = self.open(name)
                try:
                    while block := self._call(f"{name}", body.read, 1 << 20):
                        h.update(block)
                        f.write(block)
                finally:
                    body.close()
                f.flush()
                os.fsync(f.fileno())
            if digest is not None and h.hexdigest() != digest:
                raise DigestMismatch(f"the object {name} in {self.url.text} is not what was stored (its sha256 "
                                     f"differs: changed behind zap's back)")  # fmt: skip
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, name: str) -> BinaryIO:
        """A streaming read of the object."""
        return self._call(f"{name}", self.client.get_object, Bucket=self.url.bucket, Key=self.key(name))["Body"]

    def get_json(self, name: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.url.bucket, Key=self.key(name))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise explain(e, self.url, name) from None
        except Exception as e:  # noqa: BLE001
            raise explain(e, self.url, name) from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise StoreError(f"{name} in {self.url.text} is not zap's (not JSON)") from None
        return doc if isinstance(doc, dict) else {}

    def size(self, name: str) -> int | None:
        """The object's size, or None if there is none."""
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.url.bucket, Key=self.key(name))["ContentLength"])
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise explain(e, self.url, name) from None
        except Exception as e:  # noqa: BLE001
            raise explain(e, self.url, name) from None

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):
            part = names[i : i + 1000]
            self._call("deleting objects", self.client.delete_objects, Bucket=self.url.bucket,
                       Delete={"Objects": [{"Key": self.key(n)} for n in part], "Quiet": True})  # fmt: skip

    def list(self, under: str) -> Iterator[tuple[str, int, float]]:
        """(name relative to the prefix, size, modification time) of every object under `under`."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("listing objects", lambda: list(paginator.paginate(Bucket=self.url.bucket,
                                                                                  Prefix=self.key(under))))  # fmt: skip
        for page in pages:
            for o in page.get("Contents", []):
                yield o["Key"][len(self.url.prefix):], int(o["Size"]), o["LastModified"].timestamp()
