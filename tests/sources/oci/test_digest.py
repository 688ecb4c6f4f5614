from __future__ import annotations

import hashlib
import io
import random

import pytest

from importer.sources.oci.digest import BlobDigestError, Digest, InOrderVerifier, VerifyingStream

DATA = random.Random(3).randbytes(3 << 20)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


def _verifier(budget: int = 64 << 20) -> tuple[InOrderVerifier, list[int]]:
    fetched: list[int] = []

    def readinto(off: int, buf: bytearray) -> int:
        n = min(len(buf), len(DATA) - off)
        buf[:n] = DATA[off:off + n]
        fetched.append(n)
        return n

    return InOrderVerifier(DIGEST, len(DATA), "blob", readinto, budget), fetched


def test_out_of_order_reads_are_verified_without_refetching() -> None:
    v, fetched = _verifier()
    chunks = [(o, DATA[o:o + 65536]) for o in range(0, len(DATA), 65536)]
    random.Random(1).shuffle(chunks)
    for o, c in chunks:
        v.observe(o, c)
    v.finish()
    assert fetched == []


def test_a_small_budget_and_unread_gaps_are_fetched_in_order() -> None:
    v, fetched = _verifier(budget=100_000)
    for o in range(len(DATA) - 65536, 0, -65536):  # backwards: almost nothing fits the budget
        v.observe(o, DATA[o:o + 65536])
    v.finish()
    assert sum(fetched) > len(DATA) // 2


def test_a_wrong_byte_fails() -> None:
    v, _ = _verifier()
    bad = bytearray(DATA[:4096])
    bad[7] ^= 1
    v.observe(0, bad)
    with pytest.raises(BlobDigestError, match="does not match its digest"):
        v.finish()


def test_verifying_stream_checks_at_eof() -> None:
    s = VerifyingStream(io.BytesIO(DATA), DIGEST, len(DATA), "blob")  # type: ignore[arg-type]
    s.drain()
    assert s.verified
    short = VerifyingStream(io.BytesIO(DATA[:-1]), DIGEST, len(DATA), "blob")  # type: ignore[arg-type]
    with pytest.raises(BlobDigestError, match="truncated"):
        short.drain()


def test_a_full_budget_fetches_the_gap_instead_of_dropping_data() -> None:
    v, fetched = _verifier(budget=200_000)
    # everything but the first 64 KiB arrives, in order: the gap is fetched once, early
    for o in range(65536, len(DATA), 65536):
        v.observe(o, DATA[o:o + 65536])
    v.finish()
    assert sum(fetched) == 65536
