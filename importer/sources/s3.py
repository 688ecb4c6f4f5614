"""S3 (and S3-compatible) objects through boto3, behind the same Source interface as HTTP, so
resume, random access for qemu-img, checksums, progress and sparse writes work unchanged.

Every read is a ranged GetObject with IfMatch on the ETag seen at open: an object replaced
mid-import fails clearly (412) instead of mixing two versions. URL forms (CDI quirk Q12 fixed):
* s3://bucket/key, with an endpoint from --s3-endpoint (default AWS);
* https://s3.<region>.amazonaws.com/bucket/key and https://bucket.s3.<region>.amazonaws.com/key;
* http(s)://host[:port]/bucket/key for any other endpoint (path style: IPs and ports have no
  virtual hosts).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from .. import advice
from ..checksum import ChecksumSpec
from ..errors import (
    ConfigError,
    ImporterError,
    SourceAuthError,
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceTLSError,
    SourceUnavailableError,
)
from .base import SourceInfo, read_via_readinto
from .options import HttpOptions
from .ranged import read_range
from .resumable import ResumableStream
from .retry import backoff, connection_error, retrying
from .tls import verify_setting

__all__ = ["S3Location", "S3Source", "parse_s3_url"]

log = logging.getLogger(__name__)
_AWS = re.compile(r"^(?:(?P<bucket>.+)\.)?s3[.-](?:(?P<region>[a-z0-9-]+)\.)?amazonaws\.com$")
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401",
               "ExpiredToken", "InvalidToken", "AllAccessDisabled"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str
    endpoint: str | None  # None: AWS, chosen by region
    region: str | None
    virtual_host: bool

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str, endpoint: str | None = None, region: str | None = None) -> S3Location:
    p = urlsplit(url)
    if p.scheme == "s3":
        key = unquote(p.path.lstrip("/"))
        if not p.netloc or not key:
            raise ConfigError(f"{url!r}: use s3://bucket/key")
        return S3Location(p.netloc, key, endpoint, region, False)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ConfigError(f"{url!r} is not an S3 URL: use s3://bucket/key or https://host/bucket/key")
    path = unquote(p.path.lstrip("/"))
    m = _AWS.match(p.hostname)
    if m:
        region = region or m.group("region") or "us-east-1"
        if m.group("bucket"):  # virtual-hosted style: the bucket is in the host name
            if not path:
                raise ConfigError(f"{url!r}: the URL names no object key")
            return S3Location(m.group("bucket"), path, None, region, True)
        endpoint = None
    else:
        endpoint = f"{p.scheme}://{p.netloc.rpartition('@')[2]}"
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise ConfigError(f"{url!r}: expected {p.scheme}://{p.netloc}/<bucket>/<key>")
    return S3Location(bucket, key, endpoint, region, False)


class S3Source:
    def __init__(self, url: str, opts: HttpOptions, *, endpoint: str | None = None,
                 region: str | None = None) -> None:
        self.loc = parse_s3_url(url, endpoint, region)
        self.opts = opts
        self._closed = threading.Event()
        self._anonymous = False
        self.client = self._make_client()
        head = retrying(opts, self._closed, self._head)
        self._size = int(head["ContentLength"])
        self._etag: str = head["ETag"]
        self._checksum = _object_checksum(head)
        log.info("%s: %d bytes, ETag %s%s", self.loc, self._size, self._etag,
                 f", {self._checksum.algorithm} checksum" if self._checksum else "")

    def _head(self) -> dict[str, Any]:
        with self._refused_anonymous(), self._errors("opening"):
            try:
                head: dict[str, Any] = self.client.head_object(
                    Bucket=self.loc.bucket, Key=self.loc.key, ChecksumMode="ENABLED")
            except botocore.exceptions.ClientError as exc:
                # A HEAD answer has no body, so no S3 error code (Swift's s3api answers a bare
                # 400 to an unsigned HEAD): ask once more with a 1-byte GET to learn why.
                if exc.response.get("Error", {}).get("Code", "").isdigit():
                    self.client.get_object(Bucket=self.loc.bucket, Key=self.loc.key,
                                           Range="bytes=0-0")
                raise
        return head

    # ------------------------------------------------------------------ client

    def _make_client(self) -> Any:
        opts = self.opts
        session = boto3.session.Session()
        creds: dict[str, str] = {}
        signature: Any = None
        if opts.username:
            creds = {"aws_access_key_id": opts.username,
                     "aws_secret_access_key": opts.password or ""}
        elif session.get_credentials() is None:
            log.info("no S3 credentials found: reading %s anonymously", self.loc)
            signature = UNSIGNED
            self._anonymous = True
        proxies = {k: v for k, v in opts.proxies.items() if k in ("http", "https")}
        endpoint = self.loc.endpoint
        if endpoint and opts.proxy_for(endpoint) is None:
            proxies = {}
        config = Config(
            signature_version=signature,
            s3={"addressing_style": "virtual" if self.loc.virtual_host else "path"},
            proxies=proxies or None,
            # one attempt per call: retries are ours (sources/retry.py), counted once
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=opts.connect_timeout, read_timeout=opts.read_timeout,
            max_pool_connections=32)
        return session.client("s3", endpoint_url=endpoint, region_name=self.loc.region or "us-east-1",
                              config=config, verify=verify_setting(opts), **creds)

    @contextlib.contextmanager
    def _refused_anonymous(self) -> Iterator[None]:
        """Some servers (Swift's s3api) answer unsigned requests with a bare 400 that names no
        S3 error code; for an anonymous reader that can only mean anonymous access is refused."""
        try:
            yield
        except SourceError as exc:
            if self._anonymous and type(exc) is SourceError and ": 400" in str(exc):
                raise SourceAuthError(
                    f"{self.loc}: the server refused anonymous access (HTTP 400); give the "
                    "access key and secret") from exc
            raise

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        where = str(self.loc)
        try:
            yield
        except ImporterError:
            raise
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = f"{where}: {code or status} {err.get('Message', '')}".strip()
            if code in _MISSING_CODES or status == 404:
                what = "bucket" if code == "NoSuchBucket" else "object"
                raise SourceNotFoundError(f"{text}; the {what} does not exist") from exc
            if code in _AUTH_CODES or status in (401, 403):
                raise SourceAuthError(f"{text}; check the access key and secret "
                                      "(or that the object is public)") from exc
            if code == "PreconditionFailed" or status == 412:
                raise SourceContentError(f"{where} changed during the import (its ETag no longer "
                                         "matches); start the import again") from exc
            if status is not None and int(status) >= 500:
                raise SourceUnavailableError(text) from exc
            raise SourceError(f"{text} while {action}") from exc
        except botocore.exceptions.SSLError as exc:
            raise SourceTLSError(f"{where}: TLS verification failed ({exc}); give the CA "
                                 f"({advice.ca()}) or skip verification ({advice.insecure()})"
                                 ) from exc
        except botocore.exceptions.EndpointConnectionError as exc:
            raise connection_error(where, exc) from exc
        except (botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ResponseStreamingError,
                botocore.exceptions.IncompleteReadError) as exc:
            raise SourceUnavailableError(f"{where}: {exc}") from exc
        except botocore.exceptions.NoCredentialsError as exc:  # pragma: no cover - unsigned then
            raise SourceAuthError(f"{where}: no credentials") from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise SourceUnavailableError(f"{where}: {exc}") from exc

    def _get(self, start: int, end: int | None) -> Any:
        if self._closed.is_set():
            raise SourceError(f"{self.loc}: the import was stopped")
        rng = f"bytes={start}-{'' if end is None else end}"
        with self._errors("reading"):
            return self.client.get_object(Bucket=self.loc.bucket, Key=self.loc.key, Range=rng,
                                          IfMatch=self._etag)["Body"]

    def _backoff(self, attempt: int, exc: Exception) -> None:
        backoff(self.opts, self._closed, attempt, exc)

    # ------------------------------------------------------------------ Source

    def info(self) -> SourceInfo:
        return SourceInfo(size=self._size, random_access=True, name=self.loc.key,
                          version=self._etag, checksum=self._checksum)

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        def read(body: Any, b: memoryview) -> int:
            with self._errors("reading"):
                chunk = body.read(len(b))
            b[: len(chunk)] = chunk  # StreamingBody has no readinto: one copy
            return len(chunk)

        return ResumableStream(offset=offset, size=self._size, where=str(self.loc),
                               open_at=lambda pos: self._get(pos, None), read=read,
                               backoff=self._backoff)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        size = max(0, min(len(buf), self._size - offset))

        def read_into(body: Any, view: memoryview) -> int:
            with self._errors("reading"):
                chunk = body.read(min(len(view), 1 << 20))
            view[: len(chunk)] = chunk
            return len(chunk)

        return read_range(offset, memoryview(buf)[:size], open_range=self._get,
                          read_into=read_into, backoff=lambda n, exc, _at: self._backoff(n, exc),
                          short=lambda at: SourceUnavailableError(
                              f"{self.loc}: short answer to a range (at byte {at})"))

    def read_at(self, offset: int, size: int) -> bytes:
        return read_via_readinto(self, offset, size)

    def verify(self) -> None:
        pass  # nothing is checked out of band: checksums are verified in the stream

    def close(self) -> None:
        self._closed.set()


def _object_checksum(head: dict[str, Any]) -> ChecksumSpec | None:
    """The object's own SHA-256 (S3 additional checksums) when it covers the whole object:
    a multipart upload's value ends in -N and is a checksum of part checksums."""
    value = head.get("ChecksumSHA256")
    if not value or "-" in value or head.get("ChecksumType") == "COMPOSITE":
        return None
    try:
        return ChecksumSpec("sha256", base64.b64decode(value).hex())
    except ValueError:
        return None

