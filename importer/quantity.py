"""Kubernetes resource quantities (`10Gi`, `500M`, `1e9`) as byte counts.

Written by hand: the only maintained parser is inside the kubernetes client, a large dependency
for twenty lines. Semantics follow apimachinery's resource.Quantity: binary suffixes are powers
of 1024, decimal ones powers of 1000, `m` is milli, exponent forms are decimal; fractional byte
counts round up (a size must never shrink by rounding).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

__all__ = ["format_bytes", "is_decimal", "parse_quantity"]

def is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses (a
    Content-Length of '²3' crashed the upload server's request parsing, found by fuzzing)."""
    return text.isascii() and text.isdigit()


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Decimal | int] = {
    "m": Decimal("0.001"), "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18,
}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|([eE][+-]?\d+))?$")


def parse_quantity(text: str) -> int:
    """Return the number of bytes `text` stands for; ValueError with the reason otherwise."""
    s = text.strip()
    m = _RE.match(s)
    if not m:
        raise ValueError(
            f"{text!r} is not a size: use a number with an optional suffix "
            "(Ki Mi Gi Ti Pi Ei for powers of 1024, k M G T P E for powers of 1000), e.g. 10Gi"
        )
    number, suffix, exponent = m.groups()
    try:
        value = Decimal(number)
        if exponent:
            value *= Decimal(10) ** int(exponent[1:])
        elif suffix in _BINARY:
            value *= _BINARY[suffix]
        else:
            value *= Decimal(_DECIMAL[suffix or ""])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid numbers
        raise ValueError(f"{text!r} is not a size") from exc
    if value < 0:
        raise ValueError(f"{text!r} is negative; a size must be zero or more")
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def format_bytes(n: int | float) -> str:
    """A short human form (1.5 GiB) for messages; exact numbers are printed beside it."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover
