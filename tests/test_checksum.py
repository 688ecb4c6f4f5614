from __future__ import annotations

import json
from pathlib import Path

import pytest

from importer.checksum import parse_checksum

from .conftest import Images, Nginx, importer_cli


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


def test_checksum_file_as_distributions_publish_it(nginx: Nginx, images: Images,
                                                   tmp_path: Path) -> None:
    """--checksum-file (issue 24): the line for the source's file name, in sha256sum's format
    or BSD-tagged inside a PGP-signed CHECKSUM file as Fedora publishes it."""
    import hashlib

    data = images["disk.qcow2"].read_bytes()
    sha256, sha512 = hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest()
    gnu = tmp_path / "SHA256SUMS"
    gnu.write_text(f"{'0' * 64}  disk.raw\n{sha256} *disk.qcow2\n")
    fedora = tmp_path / "CHECKSUM"
    fedora.write_text("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
                      f"# disk.qcow2: {len(data)} bytes\nSHA512 (disk.qcow2) = {sha512}\n"
                      "-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n"
                      "-----END PGP SIGNATURE-----\n")
    for sums, algo in ((gnu, "sha256"), (fedora, "sha512")):
        r = importer_cli("import", "-o", "json", "--checksum-file", sums,
                         nginx.url("disk.qcow2"), tmp_path / f"{algo}.img")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["checksum"].startswith(f"{algo}:")
    wrong = tmp_path / "WRONG"
    wrong.write_text(f"{'1' * 64}  disk.qcow2\n")
    r = importer_cli("import", "--checksum-file", wrong, nginx.url("disk.qcow2"),
                     tmp_path / "w.img")
    assert r.returncode != 0 and "checksum mismatch" in r.stderr
    r = importer_cli("import", "--checksum-file", gnu, nginx.url("disk.vdi"), tmp_path / "x.img")
    assert r.returncode == 2 and "has no line for 'disk.vdi'" in r.stderr
    r = importer_cli("import", "--checksum-file", gnu, "--checksum", "md5:" + "0" * 32,
                     nginx.url("disk.qcow2"), tmp_path / "y.img")
    assert r.returncode == 2 and "both give the checksum" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name in ("w.img", "x.img", "y.img")]
