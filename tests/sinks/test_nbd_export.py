"""The NBD export as qemu-img and a hostile client meet it."""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
from pathlib import Path

from importer.sinks.nbd_export import (
    IHAVEOPT,
    NBDMAGIC,
    OPT_EXPORT_NAME,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    NbdExport,
)

DATA = random.Random(5).randbytes(3 << 20)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed"
        buf += chunk
    return buf


def test_qemu_img_reads_the_export(tmp_path: Path) -> None:
    export = NbdExport(lambda off, n: DATA[off : off + n], len(DATA))
    try:
        info = json.loads(subprocess.run(["qemu-img", "info", "-f", "raw", "--output=json",
                                          export.uri], check=True, capture_output=True).stdout)
        assert info["virtual-size"] == len(DATA)
        out = tmp_path / "out.raw"
        subprocess.run(["qemu-img", "convert", "-f", "raw", export.uri, "-O", "raw", str(out)],
                       check=True, capture_output=True)
        assert out.read_bytes() == DATA
    finally:
        export.close()
    assert not export.socket_path.exists()


def test_bounds_and_errors_over_the_wire() -> None:
    def read(off: int, n: int) -> bytes:
        if off == 4096:
            raise OSError(5, "backend failed")
        return DATA[off : off + n]

    export = NbdExport(read, len(DATA))
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(export.socket_path))
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
