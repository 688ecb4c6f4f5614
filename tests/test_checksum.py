from __future__ import annotations

import pytest

from importer.checksum import parse_checksum


def test_valid_checksums_are_normalised() -> None:
    spec = parse_checksum(" SHA256 : " + "AB" * 32)
    assert spec.algorithm == "sha256" and spec.hexdigest == "ab" * 32
    assert str(spec) == "sha256:" + "ab" * 32
    for algo, n in (("md5", 32), ("sha1", 40), ("sha512", 128)):
        assert parse_checksum(f"{algo}:{'0' * n}").algorithm == algo


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "invalid checksum format: expected 'algorithm:hash', got 'abc'"),
    ("crc32:1234", "unsupported hash algorithm 'crc32'"),
    ("md5:", "checksum hash value cannot be empty"),
    ("md5:" + "g" * 32, "not valid hexadecimal"),
    ("sha1:abcd", "invalid sha1 hash length: expected 40 hex characters, got 4"),
])
def test_cdi_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_checksum(text)
