"""Container disks built at test time: layers written with tarfile (gzip, zstd or none), an
OCI image config and manifest, and an OCI image layout directory that skopeo pushes to a real
registry with --preserve-digests (so the digests the tests compute are the ones served)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import zstandard

LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclasses.dataclass
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink
    source: Path | bytes | None = None
    link: str = ""


@dataclasses.dataclass
class Layer:
    entries: list[Entry]
    compression: str = "none"  # none, gzip, zstd
    #: an uncompressed tar made elsewhere (GNU tar's sparse members), used instead of entries
    prebuilt: Path | None = None


@dataclasses.dataclass
class Image:
    layers: list[Layer]
    architecture: str = "amd64"
    env: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


def disk_layer(disk: Path, name: str | None = None, compression: str = "none") -> Layer:
    """KubeVirt's containerDisk layout: disk/ (0555) and disk/<name> (0440), uid/gid 107."""
    return Layer([Entry("disk", "dir"), Entry(f"disk/{name or disk.name}", "file", disk)],
                 compression)


def sparse_layer(disk: Path, work: Path, fmt: str) -> Layer:
    """disk/disk.img as GNU tar writes a sparse file (--sparse, in `fmt`: gnu or posix)."""
    root = work / f"sparse-{fmt}"
    (root / "disk").mkdir(parents=True)
    subprocess.run(["cp", "--sparse=always", str(disk), str(root / "disk" / "disk.img")], check=True)
    tar = work / f"sparse-{fmt}.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "--owner=107", "--group=107", "-cf",
                    str(tar), "-C", str(root), "disk"], check=True)
    return Layer([], prebuilt=tar)


def write_tar(layer: Layer, out: Path) -> None:
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in layer.entries:
            ti = tarfile.TarInfo(e.name)
            ti.uid = ti.gid = 107
            ti.mtime = 0
            if e.kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o555
                tf.addfile(ti)
            elif e.kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.link
                tf.addfile(ti)
            elif isinstance(e.source, Path):
                ti.size, ti.mode = e.source.stat().st_size, 0o440
                with open(e.source, "rb") as src:
                    tf.addfile(ti, src)
            else:
                data = e.source or b""
                ti.size, ti.mode = len(data), 0o440
                tf.addfile(ti, io.BytesIO(data))


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Layout:
    """An OCI image layout directory under construction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: list[dict[str, object]] = []

    def put_file(self, path: Path) -> dict[str, object]:
        digest = _sha(path)
        size = path.stat().st_size
        shutil.move(path, self.blobs / digest)
        return {"digest": f"sha256:{digest}", "size": size}

    def put_bytes(self, data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    def add_image(self, image: Image, work: Path) -> dict[str, object]:
        layers, diff_ids = [], []
        for i, layer in enumerate(image.layers):
            tar = work / f"layer{i}.tar"
            if layer.prebuilt is not None:
                shutil.copyfile(layer.prebuilt, tar)
            else:
                write_tar(layer, tar)
            diff_ids.append(f"sha256:{_sha(tar)}")
            if layer.compression == "gzip":
                packed = work / f"layer{i}.tar.gz"
                with open(tar, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                mt = LAYER + "+gzip"
            elif layer.compression == "zstd":
                packed = work / f"layer{i}.tar.zst"
                with open(tar, "rb") as src, open(packed, "wb") as dst:
                    zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
                mt = LAYER + "+zstd"
            else:
                packed, mt = tar, LAYER
            desc = self.put_file(packed)
            tar.unlink(missing_ok=True)
            layers.append({"mediaType": mt, **desc})
        config = {"architecture": image.architecture, "os": "linux",
                  "config": {"Env": image.env, "Labels": image.labels},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cdesc = self.put_bytes(json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                    "config": {"mediaType": CONFIG, **cdesc}, "layers": layers}
        mdesc = self.put_bytes(json.dumps(manifest).encode())
        return {"mediaType": MANIFEST, **mdesc,
                "platform": {"architecture": image.architecture, "os": "linux"}}

    def tag(self, desc: dict[str, object], name: str) -> None:
        entry = {k: v for k, v in desc.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.index.append(entry)
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": self.index}))

    def add_index(self, descs: list[dict[str, object]]) -> dict[str, object]:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": descs}
        return {"mediaType": INDEX, **self.put_bytes(json.dumps(index).encode())}


def build(root: Path, images: dict[str, Image | list[Image]]) -> Layout:
    """A layout with each tag naming one image, or an index of several (multi-arch)."""
    layout = Layout(root)
    work = root.parent / f"{root.name}-work"
    work.mkdir(exist_ok=True)
    for tag, spec in images.items():
        if isinstance(spec, list):
            desc = layout.add_index([layout.add_image(i, work) for i in spec])
        else:
            desc = layout.add_image(spec, work)
        layout.tag(desc, tag)
    shutil.rmtree(work)
    return layout
