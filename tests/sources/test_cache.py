from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from importer.sources.cache import ReadAheadCache

DATA = random.Random(9).randbytes(5 << 20)


def test_concurrent_reads_are_exact_and_share_fetches() -> None:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def readinto_at(off: int, buf: bytearray) -> int:
        with lock:
            calls.append((off, len(buf)))
        data = DATA[off : off + len(buf)]
        buf[: len(data)] = data
        return len(data)

    cache = ReadAheadCache(readinto_at, len(DATA), window=1 << 20, slots=8, workers=4)
    rnd = random.Random(1)
    spans = [(o, rnd.randrange(1, 300_000)) for o in (rnd.randrange(len(DATA)) for _ in range(300))]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: cache.read(*s), spans))
    for (off, n), got in zip(spans, results, strict=True):
        assert bytes(got) == DATA[off : off + n]
    assert len(calls) == len(set(calls))  # concurrent misses on a window fetched it once
    assert all(off % (1 << 20) == 0 for off, _ in calls)
    cache.close()


def test_failures_are_not_cached() -> None:
    fail = [True]

    def readinto_at(off: int, buf: bytearray) -> int:
        if fail[0]:
            raise OSError("transient")
        data = DATA[off : off + len(buf)]
        buf[: len(data)] = data
        return len(data)

    cache = ReadAheadCache(readinto_at, len(DATA), window=1 << 20, ahead=0)
    with pytest.raises(OSError):
        cache.read(0, 10)
    fail[0] = False
    assert bytes(cache.read(0, 10)) == DATA[:10]
    cache.close()
