"""The NBD export as qemu-img and a hostile client meet it."""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from importer.errors import FormatError
from importer.nbd_protocol import (
    IHAVEOPT,
    NBDMAGIC,
    OPT_EXPORT_NAME,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
)
from importer.sinks.nbd_export import NbdExport
from importer.sinks.qemu import QemuInput, qemu_info

DATA = random.Random(5).randbytes(3 << 20)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed"
        buf += chunk
    return buf


def _qemu(export: NbdExport, *argv: str) -> bytes:
    """qemu-img with the export on an inherited socketpair fd, as the engine runs it."""
    conn = export.connect()
    try:
        spec = QemuInput.nbd_fd("raw", conn.fileno())
        return subprocess.run(["qemu-img", *argv[:1], spec.filename, *argv[1:]], check=True,
                              capture_output=True, pass_fds=spec.pass_fds).stdout
    finally:
        conn.close()


def test_qemu_img_reads_the_export(tmp_path: Path) -> None:
    export = NbdExport(lambda off, n: DATA[off : off + n], len(DATA))
    try:
        info = json.loads(_qemu(export, "info", "--output=json"))
        assert info["virtual-size"] == len(DATA)
        out = tmp_path / "out.raw"
        _qemu(export, "convert", "-O", "raw", str(out))
        assert out.read_bytes() == DATA
    finally:
        export.close()
    with pytest.raises(OSError):
        export.connect()  # closed: no new clients


def test_export_leaves_nothing_in_the_filesystem(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).iterdir())
    export = NbdExport(lambda off, n: DATA[off : off + n], len(DATA))
    try:
        _qemu(export, "info", "--output=json")
        assert set(Path(tempfile.gettempdir()).iterdir()) == before
    finally:
        export.close()


def test_bounds_and_errors_over_the_wire() -> None:
    def read(off: int, n: int) -> bytes:
        if off == 4096:
            raise OSError(5, "backend failed")
        return DATA[off : off + n]

    export = NbdExport(read, len(DATA))
    try:
        with export.connect() as s:
            magic, opt, _flags = struct.unpack(">QQH", _recv(s, 18))
            assert (magic, opt) == (NBDMAGIC, IHAVEOPT)
            s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
            s.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 0))
            size, _tx = struct.unpack(">QH", _recv(s, 10))
            assert size == len(DATA)

            def request(handle: int, off: int, n: int) -> tuple[int, bytes]:
                s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, handle, off, n))
                magic, err, h = struct.unpack(">IIQ", _recv(s, 16))
                assert magic == SIMPLE_REPLY_MAGIC and h == handle
                return err, (_recv(s, n) if err == 0 else b"")

            assert request(1, 10, 100) == (0, DATA[10:110])
            assert request(2, len(DATA) - 10, 100)[0] == 22  # past the end: EINVAL
            assert request(3, 0, 64 << 20)[0] == 22  # larger than the advertised maximum
            assert request(4, 4096, 512)[0] == 5  # backend failure: EIO...
            assert isinstance(export.error, OSError)  # ...and the cause is kept for the report
            assert request(5, 0, 16) == (0, DATA[:16])  # the connection survives
    finally:
        export.close()


def _vmdk(tmp_path: Path, extra: int) -> bytes:
    src = tmp_path / "v.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse",
                    str(src), "64M"], check=True)
    return src.read_bytes() + bytes(extra)


def test_an_export_whose_size_is_not_whole_sectors_does_not_hang_qemu(tmp_path: Path) -> None:
    # issue 9 item 13: qemu 7.2 waited forever for a whole-sector reply to the short tail read
    data = _vmdk(tmp_path, 100)
    assert len(data) % 512
    export = NbdExport(lambda off, n: data[off : off + n], len(data))
    try:
        conn = export.connect()
        spec = QemuInput.nbd_fd("vmdk", conn.fileno())
        started = time.monotonic()
        r = subprocess.run(["qemu-img", "info", "--output=json", spec.filename], timeout=30,
                           pass_fds=spec.pass_fds, capture_output=True)
        conn.close()
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["virtual-size"] == 64 << 20
        assert time.monotonic() - started < 10
    finally:
        export.close()


def test_cdi_large_memory_vmdk_shape_fails_fast_in_qemu_too(tmp_path: Path) -> None:
    # the shape of CDI's invalid-qcow-large-memory.img, rebuilt: a 2^57-byte vmdk in 3456-sector
    # grains, 65405 bytes long. The inspector refuses it first; qemu must also say so at once.
    data = bytearray(_vmdk(tmp_path, 0)[:65405])
    struct.pack_into("<QQ", data, 12, 0x0000FFFFFFFF0001, 0xD80)
    export = NbdExport(lambda off, n: bytes(data[off : off + n]), len(data))
    try:
        conn = export.connect()
        started = time.monotonic()
        with pytest.raises(FormatError, match="L1 size too big"):
            qemu_info(QemuInput.nbd_fd("vmdk", conn.fileno()), timeout=30)
        conn.close()
        assert time.monotonic() - started < 10
    finally:
        export.close()
