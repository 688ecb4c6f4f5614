"""Content digests: validated before use (CVE-2024-3727: an unchecked digest string reached URLs
and paths in containers/image) and verified over every byte a blob delivers."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import SourceContentError
from ...streams import drain

__all__ = ["BlobDigestError", "Digest", "InOrderVerifier", "VerifyingStream"]

_PATTERN = re.compile(r"^(sha256):([a-f0-9]{64})$|^(sha512):([a-f0-9]{128})$")


class BlobDigestError(SourceContentError):
    """A blob's bytes do not match the digest its manifest names: corrupt or tampered."""


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object, where: str) -> Digest:
        m = _PATTERN.match(text) if isinstance(text, str) else None
        if not m:
            raise SourceContentError(
                f"{where}: {str(text)[:80]!r} is not a valid digest (expected sha256:<64 hex> or "
                "sha512:<128 hex>); the manifest is corrupt or hostile")
        algo, hexd = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return cls(algo, hexd)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def new_hash(self) -> Any:
        return hashlib.new(self.algorithm)

    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def check_bytes(data: bytes, digest: Digest, size: int | None, what: str) -> None:
    """Whole small blobs (manifests, configs): size and digest, or BlobDigestError."""
    got = hashlib.new(digest.algorithm, data).hexdigest()
    if size is not None and len(data) != size:
        raise BlobDigestError(f"{what} is {len(data)} bytes, but its descriptor says {size}; "
                              "the registry or archive holds different data than the manifest names")
    if got != digest.hex:
        raise _mismatch(what, digest, got, len(data), len(data))


def _mismatch(what: str, digest: Digest, got: str, n: int, size: int) -> BlobDigestError:
    if n != size:
        return BlobDigestError(f"{what} ended after {n} of {size} bytes; the blob is truncated "
                               "(in the registry or archive, or on the way), and nothing was "
                               "imported")
    return BlobDigestError(f"{what} does not match its digest {digest} (got "
                           f"{digest.algorithm}:{got}); the data is corrupt or was tampered with (in "
                           "the registry or archive, or on the way), and nothing was imported")


class VerifyingStream(io.RawIOBase):
    """A blob read from its first byte: hashed as it passes, and at the end (EOF) the count and
    the digest must match, else BlobDigestError. Nothing downstream sees EOF before that."""

    def __init__(self, raw: io.RawIOBase, digest: Digest, size: int, what: str) -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._what = what
        self._hash = digest.new_hash()
        self.n = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.verified:
            return 0
        n = self._raw.readinto(b)
        if n:
            self._hash.update(memoryview(b)[:n])
            self.n += n
            if self.n > self._size:
                raise _mismatch(self._what, self._digest, "", self.n, self._size)
            return n
        got = self._hash.hexdigest()
        if self.n != self._size or got != self._digest.hex:
            raise _mismatch(self._what, self._digest, got, self.n, self._size)
        self.verified = True
        return 0

    def drain(self) -> None:
        drain(self)

    def close(self) -> None:
        self._raw.close()
        super().close()


class InOrderVerifier:
    """Verifies a blob that is read at random (qemu-img through NBD, parallel ranges).

    A digest needs the bytes in order, so reads that arrive at the hashed position advance the
    hash at once and reads a little ahead are kept (up to `budget` bytes) until the gap before
    them fills. When the budget is full the gap is fetched at once, so memory stays bounded;
    finish() fetches whatever no reader needed (a qcow2's refcount blocks, the tar padding).
    qemu-img and the range plan read almost in order, so little is fetched twice."""

    def __init__(self, digest: Digest, size: int, what: str,
                 readinto: Callable[[int, bytearray], int], budget: int = 64 << 20) -> None:
        self._digest = digest
        self._size = size
        self._what = what
        self._readinto = readinto
        self._budget = budget
        self._hash = digest.new_hash()
        self._pos = 0
        self._pending: dict[int, bytes] = {}
        self._held = 0
        self._lock = threading.Lock()
        self.refetched = 0

    @property
    def position(self) -> int:
        return self._pos

    def observe(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        with self._lock:
            if end <= self._pos or offset >= self._size:
                return
            if offset > self._pos and offset not in self._pending:
                if self._held + len(data) > self._budget:
                    # the hash is stuck behind a gap (bytes being fetched by another worker, or
                    # that no reader needs): fetch the gap now rather than drop what comes next
                    self._fill_to(min(self._pending, default=offset))
                if end <= self._pos:
                    return
                if offset > self._pos:
                    self._pending[offset] = bytes(data)
                    self._held += len(data)
                    return
            if offset <= self._pos:
                self._hash.update(memoryview(data)[self._pos - offset:])
                self._pos = end
                self._advance()

    def _fill_to(self, stop: int) -> None:
        buf = bytearray(min(4 << 20, max(stop - self._pos, 1)))
        while self._pos < min(stop, self._size):
            view = memoryview(buf)[:min(len(buf), stop - self._pos)]
            n = self._readinto(self._pos, view)  # type: ignore[arg-type]
            if n <= 0:
                return
            self.refetched += n
            self._hash.update(view[:n])
            self._pos += n
            self._advance()

    def _advance(self) -> None:
        while self._pending:
            usable = [o for o in self._pending if o <= self._pos]
            if not usable:
                return
            for o in usable:
                chunk = self._pending.pop(o)
                self._held -= len(chunk)
                if o + len(chunk) > self._pos:
                    self._hash.update(memoryview(chunk)[self._pos - o:])
                    self._pos = o + len(chunk)

    def finish(self) -> None:
        with self._lock:
            while self._pos < self._size:
                before = self._pos
                self._fill_to(min(self._pending, default=self._size))
                if self._pos == before:
                    break  # the blob ended early
            self._pending.clear()
            self._held = 0
            got = self._hash.hexdigest()
            if self._pos != self._size or got != self._digest.hex:
                raise _mismatch(self._what, self._digest, got, self._pos, self._size)
