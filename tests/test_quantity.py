from __future__ import annotations

import pytest

from importer.quantity import format_bytes, parse_quantity


@pytest.mark.parametrize(("text", "expected"), [
    ("10Gi", 10 * 2**30), ("500M", 500_000_000), ("1e9", 10**9), ("1E3", 1000),
    ("1073741824", 2**30), ("1.5Gi", 3 * 2**29), ("0.5Ki", 512), ("100k", 100_000),
    ("2Ti", 2 * 2**40), ("1500m", 2), (" 64Mi ", 64 * 2**20), ("0", 0), ("+1Ki", 1024),
    ("1.1", 2),  # fractional bytes round up: a size never shrinks by rounding
])
def test_kubernetes_quantities(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10GB", "10 Gi", "-1Gi", "1e", "Gi", "1.2.3"])
def test_invalid_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
