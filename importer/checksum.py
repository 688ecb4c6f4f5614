"""`algo:hex` checksums over the bytes exactly as received from the source."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ALGORITHMS", "ChecksumSpec", "checksum_for_file", "parse_checksum"]

#: algorithm -> number of hex digits, as CDI accepts them
ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


@dataclass(frozen=True, slots=True)
class ChecksumSpec:
    algorithm: str
    hexdigest: str

    def new_hash(self) -> Any:
        if self.algorithm == "crc32c":  # GCS objects' own checksum; not offered on the CLI
            return _Crc32c()
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def parse_checksum(text: str) -> ChecksumSpec:
    """Parse `algorithm:hex`; ValueError carries CDI's wording so both front-ends agree."""
    if ":" not in text:
        raise ValueError(f"invalid checksum format: expected 'algorithm:hash', got '{text}'")
    algo, _, digest = text.partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if algo not in ALGORITHMS:
        raise ValueError(
            f"unsupported hash algorithm '{algo}': supported algorithms are: md5, sha1, sha256, sha512"
        )
    if not digest:
        raise ValueError("checksum hash value cannot be empty")
    if not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(f"checksum hash is not valid hexadecimal: {digest!r}")
    if len(digest) != ALGORITHMS[algo]:
        raise ValueError(
            f"invalid {algo} hash length: expected {ALGORITHMS[algo]} hex characters, got {len(digest)}"
        )
    return ChecksumSpec(algo, digest)


_GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.+)$")
_BSD_LINE = re.compile(r"^(MD5|SHA1|SHA256|SHA512) ?\((.+)\) ?= ?([0-9a-fA-F]+)$")
_BY_LENGTH = {n: algo for algo, n in ALGORITHMS.items()}


def checksum_for_file(text: str, name: str) -> ChecksumSpec | None:
    """The checksum a SHA256SUMS-style file gives for `name`: lines as sha256sum (and md5sum,
    sha1sum, sha512sum) write them, `HEX  NAME` or `HEX *NAME`, or BSD-tagged as
    `sha256sum --tag` and Fedora's CHECKSUM files write them, `SHA256 (NAME) = HEX`; other lines
    (a PGP signature's armour, comments) are skipped. None: no line names the file."""
    for line in text.splitlines():
        line = line.strip()
        m = _BSD_LINE.match(line)
        if m and m.group(2) == name:
            return parse_checksum(f"{m.group(1).lower()}:{m.group(3)}")
        m = _GNU_LINE.match(line)
        if m and m.group(2) == name:
            algo = _BY_LENGTH.get(len(m.group(1)))
            if algo is None:
                raise ValueError(f"the checksum for {name} has {len(m.group(1))} hex digits, "
                                 "which is no md5, sha1, sha256 or sha512")
            return parse_checksum(f"{algo}:{m.group(1)}")
    return None


class _Crc32c:
    """hashlib-like crc32c (big-endian hex, as GCS reports it), on google-crc32c's C code."""

    def __init__(self) -> None:
        import google_crc32c

        self._c: Any = google_crc32c.Checksum()  # type: ignore[no-untyped-call]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._c.update(bytes(data) if isinstance(data, memoryview) else data)

    def hexdigest(self) -> str:
        return str(self._c.digest().hex())
