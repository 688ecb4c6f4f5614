"""Google Cloud Storage objects through google-cloud-storage, behind the Source interface.

* gs://bucket/object or https://storage.googleapis.com/bucket/object through the JSON API; an
  emulator through the library's own STORAGE_EMULATOR_HOST.
* Any other http(s) host is read as CDI reads it: a plain `GET <host>/<bucket>/<object>` (the
  XML API form, which any web server or S3-style gateway can serve), with a bearer token when
  credentials exist: `xml_api_source` hands it to the HTTP source with its resume and ranges.
* A service-account key file (the pod's /google/credentials.json), else the library's default
  credentials, else anonymous.
* The object's generation is pinned at open: every read asks for that generation, so an object
  replaced mid-import fails clearly. Reads are ranged with raw_download (stored bytes, never
  transcoded), each with its own timeout and no deadline on the whole download (CDI quirk Q11).
* The object's md5 (or crc32c, for composite objects) is verified when the plan reads every
  byte in order.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import google.api_core.exceptions as gexc
import google.auth
import google.auth.exceptions
import requests
import urllib3.exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

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
from .base import SequentialReader, SourceInfo, read_via_readinto
from .options import Header, HttpOptions
from .retry import connection_error, retrying
from .tls import verify_setting

if TYPE_CHECKING:
    from .http import HttpSource

__all__ = ["GcsLocation", "GcsSource", "load_credentials", "parse_gcs_url", "xml_api_source"]

log = logging.getLogger(__name__)
CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class GcsLocation:
    bucket: str
    name: str
    endpoint: str | None  # None: the library's default (or STORAGE_EMULATOR_HOST)

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def parse_gcs_url(url: str) -> GcsLocation:
    p = urlsplit(url)
    if p.scheme == "gs":
        name = unquote(p.path.lstrip("/"))
        if not p.netloc or not name:
            raise ConfigError(f"{url!r}: use gs://bucket/object")
        return GcsLocation(p.netloc, name, None)
    if p.scheme in ("http", "https") and p.hostname:
        bucket, _, name = unquote(p.path.lstrip("/")).partition("/")
        if not bucket or not name:
            raise ConfigError(f"{url!r}: expected {p.scheme}://{p.netloc}/<bucket>/<object>")
        endpoint = None if p.hostname == "storage.googleapis.com" else f"{p.scheme}://{p.netloc}"
        return GcsLocation(bucket, name, endpoint)
    raise ConfigError(f"{url!r} is not a GCS URL: use gs://bucket/object")


SCOPES = ["https://www.googleapis.com/auth/devstorage.read_only"]


def load_credentials(credentials_file: Path | None, where: str) -> tuple[Any, str]:
    """A service-account key file, else Google's default credentials, else (None, anonymous)."""
    if credentials_file is not None:
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_file(
            str(credentials_file), scopes=SCOPES)
        return creds, str(creds.project_id)
    try:
        creds, found = google.auth.default(scopes=SCOPES)
        return creds, found or "anonymous"
    except google.auth.exceptions.DefaultCredentialsError:
        log.info("no Google credentials found: reading %s anonymously", where)
        return None, "anonymous"


def xml_api_source(url: str, opts: HttpOptions, *, credentials_file: Path | None = None
                   ) -> HttpSource:
    """An http(s) GCS endpoint other than Google's, read with plain GETs as CDI does: our
    JSON API client fails against servers that only serve `/<bucket>/<object>`. The token is
    fetched once; an import outliving it (an hour) fails with the server's 401."""
    from .http import HttpSource  # imported on this path only, not for every gs:// import

    creds, _ = load_credentials(credentials_file, url)
    if creds is not None:
        from google.auth.transport.requests import Request

        try:
            creds.refresh(Request())
        except google.auth.exceptions.GoogleAuthError as exc:
            raise SourceAuthError(f"{url}: getting a token with the Google credentials failed "
                                  f"({exc}); check the service-account key") from exc
        token = Header("Authorization", f"Bearer {creds.token}", secret=True)
        opts = dataclasses.replace(opts, headers=(*opts.headers, token))
    return HttpSource(url, opts)


class GcsSource:
    def __init__(self, url: str, opts: HttpOptions, *, credentials_file: Path | None = None
                 ) -> None:
        self.loc = parse_gcs_url(url)
        self.opts = opts
        self._closed = threading.Event()
        self._local = threading.local()
        self._credentials_file = credentials_file
        with self._errors("opening"):
            self._creds, self._project = self._credentials()
        blob = retrying(opts, self._closed, self._get_blob)
        if blob is None:
            raise SourceNotFoundError(f"{self.loc}: the object does not exist")
        self._size = int(blob.size or 0)
        self._generation = blob.generation
        self._checksum = _object_checksum(blob)
        log.info("%s: %d bytes, generation %s", self.loc, self._size, self._generation)

    def _client(self) -> Any:
        """One client per thread: requests sessions are not meant to be shared."""
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        session = requests.Session()
        session.trust_env = False  # proxies come from our configuration, read once
        session.proxies = {k: v for k, v in self.opts.proxies.items() if k in ("http", "https")}
        session.verify = verify_setting(self.opts)
        options = {"api_endpoint": self.loc.endpoint} if self.loc.endpoint else None
        from google.auth.transport.requests import AuthorizedSession

        # an AuthorizedSession even for anonymous reads: the client asks its transport about
        # mTLS (`is_mtls`), which a plain requests.Session does not know (it crashed)
        creds = self._creds if self._creds is not None else AnonymousCredentials()
        authed = AuthorizedSession(creds)
        authed.trust_env, authed.proxies, authed.verify = False, session.proxies, session.verify
        client = storage.Client(project=self._project, credentials=creds, _http=authed,
                                client_options=options)
        self._local.client = client
        return client

    def _get_blob(self) -> Any:
        with self._errors("opening"):
            # retry=None: google's own policy would retry for up to 120 s under ours
            return self._client().bucket(self.loc.bucket).get_blob(
                self.loc.name, retry=None,
                timeout=(self.opts.connect_timeout, self.opts.read_timeout))

    def _credentials(self) -> tuple[Any, str]:
        """Loaded once and shared by every thread's client, so the token is fetched once."""
        return load_credentials(self._credentials_file, str(self.loc))

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        where = str(self.loc)
        try:
            yield
        except ImporterError:
            raise
        except gexc.NotFound as exc:
            if action == "reading":  # the pinned generation is gone
                raise SourceContentError(f"{where} changed or was deleted during the import "
                                         "(its generation is gone); start the import again") from exc
            raise SourceNotFoundError(f"{where}: {exc.message}; the bucket or object does not "
                                      "exist") from exc
        except (gexc.Forbidden, gexc.Unauthorized, google.auth.exceptions.GoogleAuthError) as exc:
            raise SourceAuthError(f"{where}: access denied ({exc}); check the service-account "
                                  "key, or that the object is public") from exc
        except gexc.PreconditionFailed as exc:
            raise SourceContentError(f"{where} changed during the import") from exc
        except requests.exceptions.SSLError as exc:
            raise SourceTLSError(f"{where}: TLS verification failed ({exc}); give the CA "
                                 f"({advice.ca()}) or skip verification ({advice.insecure()})"
                                 ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise connection_error(where, exc) from exc
        except (gexc.ServerError, gexc.TooManyRequests,
                requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError, OSError) as exc:  # resets, short bodies
            raise SourceUnavailableError(f"{where}: {exc}") from exc
        except gexc.GoogleAPICallError as exc:
            raise SourceError(f"{where}: {exc} while {action}") from exc

    def info(self) -> SourceInfo:
        return SourceInfo(size=self._size, random_access=True, name=self.loc.name,
                          version=str(self._generation), checksum=self._checksum)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        size = max(0, min(len(buf), self._size - offset))
        if size == 0:
            return 0

        def fetch() -> int:
            if self._closed.is_set():
                raise SourceError(f"{self.loc}: the import was stopped")
            with self._errors("reading"):
                blob = self._client().bucket(self.loc.bucket).blob(
                    self.loc.name, generation=self._generation)
                data = blob.download_as_bytes(
                    start=offset, end=offset + size - 1, raw_download=True, checksum=None,
                    timeout=(self.opts.connect_timeout, self.opts.read_timeout), retry=None)
            if len(data) != size:
                raise SourceUnavailableError(f"{self.loc}: short answer to a range request "
                                             f"({len(data)} of {size} bytes)")
            buf[:size] = data
            return size

        return retrying(self.opts, self._closed, fetch)

    def read_at(self, offset: int, size: int) -> bytes:
        return read_via_readinto(self, offset, size)

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        return SequentialReader(self.readinto_at, offset, CHUNK)

    def verify(self) -> None:
        pass  # nothing is checked out of band: checksums are verified in the stream

    def close(self) -> None:
        self._closed.set()


def _object_checksum(blob: Any) -> ChecksumSpec | None:
    if blob.md5_hash:
        return ChecksumSpec("md5", base64.b64decode(blob.md5_hash).hex())
    if blob.crc32c:
        return ChecksumSpec("crc32c", base64.b64decode(blob.crc32c).hex())
    return None
