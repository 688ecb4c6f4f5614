"""Manifests, indexes and image configs (OCI image spec 1.1 and Docker schema 2), resolved to the
one image of the wanted platform; the config's facts CDI acts on (architecture, bootc labels,
KUBEVIRT_IO_ environment entries)."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError, SourceContentError, SourceNotFoundError
from .digest import Digest, check_bytes

__all__ = [
    "ACCEPT",
    "Descriptor",
    "Image",
    "bootc_error",
    "host_architecture",
    "kubevirt_labels",
    "parse_manifest",
    "select_platform",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v1+prettyjws")
ACCEPT = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST = 4 << 20  # distribution's own limit
MAX_CONFIG = 16 << 20

#: uname -m -> GOARCH, as the platform field of an index names architectures
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "s390x": "s390x", "ppc64le": "ppc64le", "riscv64": "riscv64", "i686": "386",
         "i386": "386", "armv7l": "arm"}


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: object, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise SourceContentError(f"{where}: a descriptor is not a JSON object")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SourceContentError(f"{where}: descriptor has no valid size")
        plat = obj.get("platform")
        ann = obj.get("annotations")
        return cls(str(obj.get("mediaType", "")), Digest.parse(obj.get("digest"), where), size,
                   plat if isinstance(plat, dict) else {},
                   {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {})

    @property
    def platform_text(self) -> str:
        p = self.platform
        text = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
        return text + (f"/{p['variant']}" if p.get("variant") else "")


@dataclass(frozen=True, slots=True)
class Image:
    """One resolved image: its manifest's digest, config and layers (bottom first)."""

    manifest_digest: Digest
    media_type: str
    config: dict[str, Any]
    layers: list[Descriptor]

    @property
    def architecture(self) -> str:
        return str(self.config.get("architecture", ""))

    @property
    def env(self) -> list[str]:
        env = (self.config.get("config") or {}).get("Env") or []
        return [e for e in env if isinstance(e, str)]

    @property
    def labels(self) -> dict[str, str]:
        labels = (self.config.get("config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceContentError(f"{what} is not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise SourceContentError(f"{what} is not a JSON object")
    return obj


def media_type_of(data: bytes, header_type: str, what: str) -> str:
    """The manifest's own mediaType field wins over the HTTP header (an OCI layout has none)."""
    obj = _json(data, what)
    mt = str(obj.get("mediaType") or header_type or "")
    if not mt and "manifests" in obj:
        mt = OCI_INDEX
    elif not mt and "layers" in obj:
        mt = OCI_MANIFEST
    if mt in DOCKER_V1 or obj.get("schemaVersion") == 1:
        raise FormatError(f"{what} is a Docker schema 1 manifest, which is deprecated and carries "
                          "no digests to verify; push the image again with a current tool")
    if mt not in ACCEPT:
        raise FormatError(f"{what} has media type {mt!r}, which is not an image manifest or "
                          "index (is this an artifact rather than a container disk?)")
    return mt


def index_entries(data: bytes, what: str) -> list[Descriptor]:
    obj = _json(data, what)
    entries = obj.get("manifests")
    if not isinstance(entries, list):
        raise SourceContentError(f"{what}: an index without a manifests list")
    return [Descriptor.parse(e, f"{what} entry {i}") for i, e in enumerate(entries)]


def select_platform(entries: list[Descriptor], arch: str, what: str) -> Descriptor:
    """The image for linux/<arch>: attestation manifests (platform unknown/unknown) and other
    operating systems are skipped; with several variants the first listed wins, as in
    containers/image."""
    images = [e for e in entries if e.media_type not in INDEX_TYPES]
    chosen = [e for e in images if e.platform.get("architecture") == arch
              and e.platform.get("os", "linux") == "linux"]
    if chosen:
        return chosen[0]
    if len(images) == 1 and not images[0].platform:
        return images[0]  # an index of one image without platform data (a plain OCI layout)
    found = ", ".join(sorted({e.platform_text for e in images})) or "none"
    raise SourceNotFoundError(f"{what} has no image for linux/{arch} (it has: {found}); set the "
                              "architecture to one of those (IMPORTER_REGISTRY_IMAGE_ARCHITECTURE "
                              "or --arch)")


def parse_manifest(data: bytes, media_type: str, digest: Digest, what: str,
                   fetch_config: Callable[[Descriptor], bytes]) -> Image:
    obj = _json(data, what)
    cfg = Descriptor.parse(obj.get("config"), f"{what} config")
    layers_obj = obj.get("layers")
    if not isinstance(layers_obj, list) or not layers_obj:
        raise FormatError(f"{what} lists no layers: there is no disk in this image")
    layers = [Descriptor.parse(layer, f"{what} layer {i + 1}") for i, layer in enumerate(layers_obj)]
    if cfg.size > MAX_CONFIG:
        raise SourceContentError(f"{what}: the image config is {cfg.size} bytes, more than "
                                 f"{MAX_CONFIG}; refusing it")
    raw = fetch_config(cfg)
    check_bytes(raw, cfg.digest, cfg.size, f"{what} config {cfg.digest.short()}")
    config = _json(raw, f"{what} config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if isinstance(diff_ids, list) and diff_ids and len(diff_ids) != len(layers):
        raise SourceContentError(f"{what}: the config names {len(diff_ids)} layers but the "
                                 f"manifest {len(layers)}; the image is inconsistent")
    return Image(digest, media_type, config, layers)


def check_architecture(image: Image, requested: str | None) -> None:
    """CDI's check when an architecture was requested (message kept: users search for it)."""
    if requested and image.architecture != requested:
        raise SourceNotFoundError(
            f'Error validating architecture: manifest image architecture: "{image.architecture}"'
            f' doesn\'t match requested architecture: "{requested}"')


BOOTC_MESSAGE = ("bootc image detected: this image contains an ostree-based bootable OS "
                 "(containers.bootc=1 or ostree.bootable=1) and cannot be imported as a regular "
                 "container disk; bootc-to-disk conversion is not yet implemented")


def bootc_error(image: Image) -> str | None:
    labels = image.labels
    if labels.get("containers.bootc") == "1" or labels.get("ostree.bootable") == "1":
        return BOOTC_MESSAGE
    return None


def kubevirt_labels(env: list[str]) -> dict[str, str]:
    """CDI's mapping (docs/pod-contract.md 4.4.4): for KEY=VALUE with KUBEVIRT_IO_ in KEY, the part
    before becomes a dotted prefix and the part after a dashed name under kubevirt.io/, lower
    case: INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small ->
    instancetype.kubevirt.io/default-instancetype: u1.small."""
    labels: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if not sep or "KUBEVIRT_IO_" not in key:
            continue
        prefix, _, suffix = key.partition("KUBEVIRT_IO_")
        label = prefix.rstrip("_").replace("_", ".")
        label = (label + "." if label else "") + "kubevirt.io/" + suffix.replace("_", "-")
        labels[label.lower()] = value
    return labels
