"""Fuzz targets for every parser of untrusted bytes (issue 9, item 22), shared by the
hypothesis tests (short, bounded, in CI) and scripts/fuzz.sh (atheris, coverage-guided, long).

A target takes arbitrary bytes and must either succeed or raise one of the importer's own
documented errors: anything else (IndexError, struct.error, a hang, a crash) is a bug. Seeds are
real images made by qemu-img and the codecs at run time.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from importer.disks.base import NativeUnsupported
from importer.disks.qcow2 import Qcow2Disk, parse_header
from importer.disks.qcow2_stream import StreamedQcow2
from importer.disks.vmdk import VmdkDisk
from importer.disks.vmdk_stream import StreamedVmdk
from importer.errors import (
    CancelledError,
    ConfigError,
    FormatError,
    ImporterError,
    SourceContentError,
    UnsafeImageError,
)
from importer.formats.codecs import open_decoder, sniff_codec
from importer.formats.detect import detect
from importer.formats.headers import inspect_image, sniff_format
from importer.formats.pinned import PinnedBytes
from importer.formats.vmdk_header import parse_vmdk_header
from importer.formats.xz_blocks import read_xz_index
from importer.progress import Progress
from importer.sinks.archive import Extraction
from importer.sources.oci.digest import Digest
from importer.sources.oci.manifest import index_entries, media_type_of, parse_manifest
from importer.sources.oci.reference import parse_reference
from importer.termination import MAX_BYTES, json_message, text_message

EXPECTED = (FormatError, SourceContentError)
#: bytes a decoder may produce before a target stops reading (bounds time and memory)
DECODE_LIMIT = 4 << 20


def headers(data: bytes) -> None:
    fmt = sniff_format(data[:65536])
    with contextlib.suppress(EXPECTED):
        inspect_image(fmt, lambda off, n: data[off : off + n], len(data))


def detection(data: bytes) -> None:
    try:
        det = detect(io.BytesIO(data), size=len(data), source_read_at=None)  # type: ignore[arg-type]
        drained = 0
        while drained < DECODE_LIMIT and (chunk := det.stream.read(1 << 16)):
            drained += len(chunk)
    except EXPECTED:
        pass


def codecs(data: bytes) -> None:
    codec = sniff_codec(data[:65536])
    if codec is None:
        return
    stream = open_decoder(codec, io.BytesIO(data))  # type: ignore[arg-type]
    try:
        out = 0
        while out < DECODE_LIMIT and (chunk := stream.read(1 << 16)):
            out += len(chunk)
    except EXPECTED:
        pass


def xz_index(data: bytes) -> None:
    try:
        blocks = read_xz_index(lambda off, n: data[max(off, 0) : max(off, 0) + n], len(data))
    except EXPECTED:
        return
    for b in blocks:  # what the index claims must at least be self-consistent
        assert b.offset >= 0 and b.uncompressed_offset >= 0 and b.uncompressed_size >= 0


def tar_walker(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-tar-") as d:
        ex = Extraction(Path(d) / "out", Progress(), limit=64 << 20)
        try:
            ex.run(io.BytesIO(data))  # type: ignore[arg-type]
        except ImporterError:
            pass
        finally:
            ex.abort()


def oci(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    with contextlib.suppress(ConfigError):
        parse_reference(text)
    what = "fuzzed manifest"
    with contextlib.suppress(ImporterError):
        media_type_of(data, "", what)
    with contextlib.suppress(ImporterError):
        index_entries(data, what)
    with contextlib.suppress(ImporterError):
        parse_manifest(data, "application/vnd.oci.image.manifest.v1+json",
                       Digest.parse("sha256:" + "0" * 64, what), what, lambda _d: b"{}")


def termination(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    half = len(text) // 2
    labels = {text[:half][:200]: text[half:]} if text else None
    out = json_message(text, scratch_space_required=False, labels=labels)
    assert len(out.encode()) <= MAX_BYTES
    assert json.loads(out)["message"] is not None
    assert len(text_message(text).encode()) <= MAX_BYTES


def pinned(data: bytes) -> None:
    """The pin store: whatever order readers come in, the first bytes seen at an offset are
    the ones every later reader gets."""
    pins = PinnedBytes()
    truth = bytearray(len(data))
    seen = bytearray(len(data))
    for i in range(0, len(data) - 3, 4):
        off, n = data[i] % max(len(data), 1), data[i + 1] % 64 + 1
        chunk = bytes([data[i + 2]]) * n
        got = pins.pin(off, chunk)
        for k in range(len(got)):
            if off + k < len(data):
                if not seen[off + k]:
                    seen[off + k], truth[off + k] = 1, got[k]
                assert got[k] == truth[off + k]


#: a hostile qcow2 may also be declined (NativeUnsupported) or refused as unsafe
QCOW2_EXPECTED = (FormatError, SourceContentError, UnsafeImageError, NativeUnsupported)
QCOW2_VIRTUAL_LIMIT = 64 << 20  # bounds the copy a mutated header can ask for


def _sink() -> tuple[Callable[[int, bytes | bytearray, int, int], int],
                     Callable[[int, int], None]]:
    def write(offset: int, buf: bytes | bytearray, length: int, start: int = 0) -> int:
        assert offset >= 0 and length >= 0 and start + length <= len(buf)
        return 0

    def write_zeros(offset: int, length: int) -> None:
        assert offset >= 0 and length >= 0

    return write, write_zeros


def _reader(data: bytes) -> Callable[[int, bytearray | memoryview], int]:
    def readinto(offset: int, out: bytearray | memoryview) -> int:
        chunk = data[offset : offset + len(out)]
        memoryview(out)[: len(chunk)] = chunk
        return len(chunk)

    return readinto


def _read_whole(disk: Any) -> None:
    """Every extent of a native disk, in order and without gaps, and every data byte read."""
    pos = 0
    for ext in disk.extents():
        assert ext.start == pos and ext.length > 0
        pos = ext.end
        if not ext.zero:
            for off in range(ext.start, ext.end, 1 << 20):
                n = min(1 << 20, ext.end - off)
                assert disk.readinto_at(off, bytearray(n)) == n
    assert pos == disk.size


def qcow2_random(data: bytes) -> None:
    """The native reader over hostile bytes: every extent read, or a documented refusal."""
    try:
        header = parse_header(data[:512])
        if header.size > QCOW2_VIRTUAL_LIMIT:
            return
        disk = Qcow2Disk(header, _reader(data), len(data), PinnedBytes(), workers=1)
        try:
            _read_whole(disk)
        finally:
            disk.close()
    except QCOW2_EXPECTED:
        pass


def qcow2_stream(data: bytes) -> None:
    """The streaming reader over hostile bytes."""
    try:
        header = parse_header(data[:512])
        if header.size > QCOW2_VIRTUAL_LIMIT:
            return
        write, write_zeros = _sink()
        reader = StreamedQcow2(header, write=write, write_zeros=write_zeros,
                               scratch_dir=Path(tempfile.gettempdir()),
                               hold_limit=1 << 20)
        reader.run(io.BytesIO(data), lambda: False)  # type: ignore[arg-type]
    except QCOW2_EXPECTED:
        pass


def vmdk_random(data: bytes) -> None:
    """The native vmdk reader over hostile bytes: every extent read, or a documented refusal."""
    try:
        header = parse_vmdk_header(data[:512])
        if header.size > QCOW2_VIRTUAL_LIMIT or header.grain > 1 << 20:
            return  # the planner sends larger grains to qemu-img

        _read_whole(VmdkDisk(header, _reader(data), len(data), PinnedBytes()))
    except QCOW2_EXPECTED:
        pass


def vmdk_stream(data: bytes) -> None:
    """The streaming vmdk reader over hostile bytes."""
    try:
        header = parse_vmdk_header(data[:512])
        if header.size > QCOW2_VIRTUAL_LIMIT or header.grain > 1 << 20:
            return
        write, write_zeros = _sink()
        StreamedVmdk(header, write=write, write_zeros=write_zeros).run(
            io.BytesIO(data), lambda: False)  # type: ignore[arg-type]
    except QCOW2_EXPECTED:
        pass


def tables(data: bytes) -> None:
    """The vmdk and vdi table walkers (truncation checks) over whole images: through the pinned
    reader, as the importer reads them."""
    fmt = sniff_format(data[:65536])
    if fmt not in ("vmdk", "vdi"):
        return
    pins = PinnedBytes()
    with contextlib.suppress(*EXPECTED, UnsafeImageError):
        info = inspect_image(fmt, pins.reader(lambda off, n: data[off : off + n]), len(data))
        assert info.virtual_size is not None and info.virtual_size >= 0


def ova(data: bytes) -> None:
    """An OVA over hostile bytes, at random and as a stream: the tar walk, the descriptor and
    manifest parsers, the chosen disk's window read to its end, or a documented refusal."""
    from importer.sources.base import SourceInfo
    from importer.sources.once import StreamSource
    from importer.sources.ova import open_ova_disk

    class Memory:
        def info(self) -> SourceInfo:
            return SourceInfo(size=len(data), random_access=True, name="fuzz.ova")

        def open_stream(self, offset: int = 0) -> io.RawIOBase:
            return io.BytesIO(data[offset:])

        def read_at(self, offset: int, size: int) -> bytes:
            return data[offset: offset + size]

        def readinto_at(self, offset: int, buf: bytearray) -> int:
            part = data[offset: offset + len(buf)]
            buf[: len(part)] = part
            return len(part)

        def verify(self) -> None:
            pass

        def close(self) -> None:
            pass

    for source in (Memory(), StreamSource(io.BytesIO(data), None, "fuzz.ova")):
        try:
            disk, _head = open_ova_disk(source, None, forced=False, pod=False)  # type: ignore[arg-type]
            with disk.open_stream(0) as stream:
                while stream.read(1 << 16):
                    pass
        except ImporterError:
            pass


def http_framing(data: bytes) -> None:
    """The upload server's request framing (Content-Length, chunked, Transfer-Encoding), the
    chunked decoder, a tus PATCH body handed to the pipeline, and the multipart form parser."""
    import http.client
    import threading
    import types

    from importer.uploadserver.body import FormFile
    from importer.uploadserver.resumable import ResumableBody
    from importer.uploadserver.server import Handler

    head, _, body = data.partition(b"\r\n\r\n")
    try:
        headers = http.client.parse_headers(io.BytesIO(head + b"\r\n\r\n"))
    except http.client.HTTPException:
        return
    fake = types.SimpleNamespace(headers=headers, rfile=io.BytesIO(body))
    try:
        request, _size = Handler._body(fake)  # type: ignore[arg-type]
    except ImporterError:
        return
    try:
        if b"boundary=" in head:
            boundary = head.split(b"boundary=", 1)[1].split(b"\r\n", 1)[0].decode("latin-1")
            form = FormFile(request, boundary.strip() or "b")
            while form.read(1 << 16):
                pass
            return
        done = threading.Event()
        tus = ResumableBody(len(body) // 2 + 1, done)
        got = [0]

        def pipeline() -> None:  # the import's side, reading while PATCH appends
            with contextlib.suppress(CancelledError):
                while chunk := tus.read(1 << 16):
                    got[0] += len(chunk)

        reader = threading.Thread(target=pipeline, daemon=True)
        reader.start()
        try:
            tus.append(request.read)
        finally:
            while got[0] < tus.offset and reader.is_alive():
                time.sleep(0.001)
            done.set()
            if tus.offset < tus.length:
                tus._q.put(b"")  # wake the reader at once (its wait polls every 0.5 s)
            reader.join(5)
        assert got[0] == tus.offset <= tus.length
    except ImporterError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "headers": headers, "detection": detection, "codecs": codecs, "xz_index": xz_index,
    "tar": tar_walker, "oci": oci, "termination": termination, "pinned": pinned,
    "qcow2_random": qcow2_random, "qcow2_stream": qcow2_stream, "tables": tables,
    "http_framing": http_framing, "vmdk_random": vmdk_random, "vmdk_stream": vmdk_stream,
    "ova": ova,
}


def make_seeds(work: Path) -> dict[str, list[bytes]]:
    """Real images, their compressed forms and archives, made by the real tools."""
    raw = work / "seed.raw"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"importer fuzz seed " * 1000)
    images = []
    qcow2s = []
    for opts in (["-o", "cluster_size=4096"], ["-c", "-o", "cluster_size=4096"],
                 ["-c", "-o", "compression_type=zstd,cluster_size=4096"]):
        out = work / f"seed-q{len(qcow2s)}.qcow2"
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", *opts, str(raw),
                        str(out)], check=True)
        qcow2s.append(out.read_bytes())
    for fmt, opts in (("qcow2", []), ("qcow2", ["-o", "compat=0.10"]), ("vmdk", ["-o",
                      "subformat=streamOptimized"]), ("vmdk", []), ("vdi", []), ("vpc", []),
                      ("vhdx", [])):
        out = work / f"seed-{len(images)}.{fmt}"
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *opts, str(raw),
                        str(out)], check=True)
        images.append(out.read_bytes()[: 1 << 20])
    iso = bytearray(64 << 10)
    iso[0x8001:0x8006] = b"CD001"
    images.append(bytes(iso))
    head = raw.read_bytes()[: 256 << 10]
    compressed = []
    for tool in (["gzip", "-c"], ["xz", "-c", "--block-size=64KiB"], ["zstd", "-q", "-c"],
                 ["bzip2", "-c"]):
        if shutil.which(tool[0]):
            compressed.append(subprocess.run(tool, input=head, capture_output=True,
                                             check=True).stdout)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, content in (("dir/a.txt", b"alpha"), ("b.bin", bytes(3000))):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64,
        "size": 2}, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": "sha256:" + "b" * 64, "size": 10}]}).encode()
    whole = []  # small and complete: every table entry inside the file
    for fmt, opts in (("vmdk", ["-o", "subformat=monolithicSparse"]), ("vdi", []),
                      ("vdi", ["-o", "static=on"])):
        out = work / f"seed-whole-{len(whole)}.{fmt}"
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *opts, str(raw),
                        str(out)], check=True)
        whole.append(out.read_bytes())
    requests = [
        b"Content-Length: 10\r\n\r\n0123456789",
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nT: 1\r\n\r\n",
        b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 92\r\n\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nDISK\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
    ]
    from tests.disks.vmdk_images import vmware_stream_optimized

    vmdks = [vmware_stream_optimized(raw.read_bytes()[: 2 << 20], gtes=16)]
    for sub in ("streamOptimized", "monolithicSparse"):
        out = work / f"seed-{sub}.vmdk"
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                        f"subformat={sub}", str(raw), str(out)], check=True)
        vmdks.append(out.read_bytes())
    from tests.ova_images import OvaDisk, make_ova

    ovas = []
    small = work / "seed-ova.vmdk"
    small.write_bytes(vmdks[1])
    for i, kw in enumerate(({}, {"style": "vbox"}, {"pax": True})):
        out = work / f"seed-{i}.ova"
        make_ova(out, f"seed{i}", [OvaDisk(small, 4 << 20, gzip=i == 1)], **kw)  # type: ignore[arg-type]
        ovas.append(out.read_bytes())
    return {
        "vmdk_random": vmdks, "vmdk_stream": vmdks, "ova": ovas,
        "tables": whole, "http_framing": requests,
        "headers": images, "detection": images + compressed, "codecs": compressed,
        "xz_index": [c for c in compressed if c.startswith(b"\xfd7zXZ")],
        "tar": [buf.getvalue()], "oci": [manifest, b"docker://quay.io/a/b:1",
                                         b"oci-archive:/x.tar:name"],
        "termination": [b"Import Complete", "é".encode() * 3000], "pinned": [bytes(range(256))],
        "qcow2_random": qcow2s, "qcow2_stream": qcow2s,
    }
