"""OVF descriptors and OVA manifests (DMTF DSP0243, OVF 1.x and 2.x), as VMware's ovftool,
vSphere's "Export OVF Template" and VirtualBox write them: the files an appliance references,
its disks with their capacities, and the VM's name, CPUs and memory.

Parsed with defusedxml: a descriptor comes from whoever made the appliance, and must not make
the parser fetch a URL or expand an entity bomb. Only the elements an import needs are read;
namespaces are matched by local name, because exporters disagree on prefixes and OVF 1 and 2
differ only in the namespace URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..checksum import ALGORITHMS
from ..errors import FormatError

__all__ = ["Manifest", "OvfDescriptor", "OvfDisk", "parse_manifest", "parse_ovf"]

#: a descriptor is small; a larger one is not an appliance's
MAX_DESCRIPTOR = 4 << 20
#: ovf:capacityAllocationUnits as exporters write them: "byte", "byte * 2^30", "GigaBytes"
_UNIT_POWER = re.compile(r"^\s*byte\s*(?:\*\s*2\s*\^\s*(\d+))?\s*$", re.IGNORECASE)
_UNIT_NAMES = {"bytes": 0, "kilobytes": 10, "megabytes": 20, "gigabytes": 30, "terabytes": 40,
               "kb": 10, "mb": 20, "gb": 30, "tb": 40}


@dataclass(frozen=True, slots=True)
class OvfDisk:
    disk_id: str
    href: str  # the file in the OVA
    capacity: int  # bytes the guest sees
    file_size: int | None  # bytes in the OVA, from References
    compression: str | None  # "gzip" when the file is gzip-compressed
    format: str  # the format URI (…vmdk.html#streamOptimized)


@dataclass(frozen=True, slots=True)
class OvfDescriptor:
    name: str  # the VirtualSystem's name (or id)
    system_id: str
    cpus: int | None
    memory: int | None  # bytes
    disks: tuple[OvfDisk, ...]
    files: dict[str, int | None] = field(default_factory=dict)  # href -> size


def _local(tag: object) -> str:
    return str(tag).rpartition("}")[2] if isinstance(tag, str) else ""


def _attr(el: object, name: str) -> str | None:
    """An attribute by local name, whatever its namespace (ovf:href, href)."""
    for key, value in el.attrib.items():  # type: ignore[attr-defined]
        if key.rpartition("}")[2] == name:
            return str(value)
    return None


def _children(el: object, name: str) -> list[object]:
    return [c for c in el if _local(c.tag) == name]  # type: ignore[attr-defined]


def _int(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise FormatError(f"OVF descriptor: {what} {text!r} is not a whole number") from None
    if value < 0:
        raise FormatError(f"OVF descriptor: {what} {text!r} is negative")
    return value


def _unit_shift(units: str | None, what: str) -> int:
    if not units:
        return 0
    m = _UNIT_POWER.match(units)
    if m:
        return int(m.group(1) or 0)
    shift = _UNIT_NAMES.get(units.strip().lower())
    if shift is None:
        raise FormatError(f"OVF descriptor: unknown allocation units {units!r} for {what}")
    return shift


def parse_ovf(data: bytes) -> OvfDescriptor:
    """The descriptor's appliance; FormatError naming what is missing or malformed."""
    import defusedxml.ElementTree as DET  # type: ignore[import-untyped]
    from defusedxml import DefusedXmlException

    if len(data) > MAX_DESCRIPTOR:
        raise FormatError(f"the OVF descriptor is larger than {MAX_DESCRIPTOR} bytes")
    try:
        root = DET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise FormatError(f"the OVF descriptor uses a forbidden XML feature ({exc})") from exc
    except Exception as exc:  # ParseError, and expat's own errors
        raise FormatError(f"the OVF descriptor is not XML ({exc})") from exc
    if _local(root.tag) != "Envelope":
        raise FormatError(f"the OVF descriptor's root is <{_local(root.tag)}>, not <Envelope>")
    files: dict[str, tuple[str, int | None, str | None]] = {}  # id -> href, size, compression
    for refs in _children(root, "References"):
        for f in _children(refs, "File"):
            fid, href = _attr(f, "id"), _attr(f, "href")
            if not fid or not href:
                raise FormatError("OVF descriptor: a References/File lacks ovf:id or ovf:href")
            files[fid] = (href, _int(_attr(f, "size"), f"the size of {href}"),
                          _attr(f, "compression"))
    disks = []
    for section in _children(root, "DiskSection"):
        for d in _children(section, "Disk"):
            disk_id = _attr(d, "diskId") or ""
            ref = _attr(d, "fileRef")
            if not ref:
                continue  # a blank disk the VM creates: nothing to import
            if ref not in files:
                raise FormatError(f"OVF descriptor: disk {disk_id} names file {ref!r}, which "
                                  "References does not list")
            href, size, compression = files[ref]
            capacity = _int(_attr(d, "capacity"), f"the capacity of disk {disk_id}")
            if capacity is None:
                raise FormatError(f"OVF descriptor: disk {disk_id} has no ovf:capacity")
            shift = _unit_shift(_attr(d, "capacityAllocationUnits"), f"disk {disk_id}")
            disks.append(OvfDisk(disk_id, href, capacity << shift, size, compression,
                                 _attr(d, "format") or ""))
    systems = [s for s in root.iter() if _local(s.tag) == "VirtualSystem"]
    name, system_id, cpus, memory = "", "", None, None
    if systems:
        vs = systems[0]
        system_id = _attr(vs, "id") or ""
        names = _children(vs, "Name")
        name = (names[0].text or "").strip() if names else system_id  # type: ignore[attr-defined]
        cpus, memory = _hardware(vs)
    return OvfDescriptor(name or system_id, system_id, cpus, memory, tuple(disks),
                         {href: size for href, size, _c in files.values()})


def _hardware(vs: object) -> tuple[int | None, int | None]:
    """CPUs (CIM ResourceType 3) and memory in bytes (type 4) of the first hardware section."""
    cpus = memory = None
    for item in (i for i in vs.iter() if _local(i.tag) == "Item"):  # type: ignore[attr-defined]
        fields = {_local(c.tag): (c.text or "").strip() for c in item}
        kind = fields.get("ResourceType")
        quantity = _int(fields.get("VirtualQuantity"), "a VirtualQuantity")
        if kind == "3" and cpus is None:
            cpus = quantity
        elif kind == "4" and memory is None and quantity is not None:
            units = fields.get("AllocationUnits") or "byte * 2^20"  # MB when unsaid
            memory = quantity << _unit_shift(units, "the memory")
    return cpus, memory


@dataclass(frozen=True, slots=True)
class Manifest:
    """file name -> (algorithm as hashlib names it, hex digest)."""

    digests: dict[str, tuple[str, str]]


_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def parse_manifest(data: bytes, name: str) -> Manifest:
    """`SHA256(file)= hex` lines (ovftool) or `SHA256 (file) = hex` (VirtualBox)."""
    if len(data) > MAX_DESCRIPTOR:
        raise FormatError(f"the manifest {name} is larger than {MAX_DESCRIPTOR} bytes")
    digests: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line.strip())
        algo = m.group(1).lower() if m else ""
        if not m or len(m.group(3)) != ALGORITHMS[algo]:
            raise FormatError(f"the manifest {name} line {number} is not 'SHA256(FILE)= HEX': "
                              f"{line.strip()[:80]!r}")
        digests[m.group(2).strip()] = (algo, m.group(3).lower())
    return Manifest(digests)
