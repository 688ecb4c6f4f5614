"""Plans: how an import is carried out, decided in one place.

`choose_plan` is a pure function of what the source offers, what the detector found, the target
and the options; it returns the plan with a reason a person can read. `importer inspect` prints
the same decision `importer import` then carries out (engine.py asks this function for both).

Plans, cheapest first:
* stream    raw/iso (possibly gz/xz/zstd/bz2-compressed) decoded in order straight to the
            target, zeros skipped; a qcow2 or vmdk the same way through the native streaming
            readers (disks/qcow2_stream.py, disks/vmdk_stream.py) when the source cannot be
            read at random;
* ranges    raw/iso from a range-capable source: the extent copier fetches chunks on several
            connections, each written at its offset;
* extents   a random-access disk with a data/zero map read by the extent copier: the native
            qcow2 or vmdk reader, or the blocks of a multi-block .xz decoded on all cores;
* convert   vdi/vhd/vhdx (and qcow2 or vmdk with --converter qemu-img, or what the native
            reader declines): qemu-img reads the image through our NBD export of the pinned
            source, nothing staged;
* staged    vdi/vhd/vhdx (or qcow2/vmdk with --converter qemu-img) from a source that cannot be
            read at random (no ranges, gz or zstd around it, a checksum to verify first):
            decoded to scratch, inspected again, then converted;
* archive   a tar extracted safely into a directory;
* delta     a warm import's later stage, applied onto the existing disk: a qcow2 delta whose
            backing file is the previous checkpoint, read at random by the native reader (only
            its allocated and zero clusters), or the areas a source says changed since it (VDDK);
* blank     a new empty disk.
"""

from __future__ import annotations

import importlib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .. import advice
from ..errors import FormatError
from ..formats.headers import ImageInfo
from ..settings import ContentType, ImportConfig

__all__ = ["NATIVE_FORMATS", "Converter", "DiskKind", "Plan", "PlanName", "SourceFacts",
           "choose_plan", "runner"]


class PlanName(StrEnum):
    """The plans (module docstring). A StrEnum: the result's JSON and the logs show the value."""

    STREAM = "stream"
    RANGES = "ranges"
    EXTENTS = "extents"
    CONVERT = "convert"
    STAGED = "staged"
    ARCHIVE = "archive"
    DELTA = "delta"
    BLANK = "blank"


class DiskKind(StrEnum):
    """What the extent copier (or a native streaming reader) reads."""

    RAW = "raw"
    XZ = "xz"
    QCOW2 = "qcow2"
    VMDK = "vmdk"


class Converter(StrEnum):
    NATIVE = "native"
    QEMU_IMG = "qemu-img"


#: the module that carries out each plan, imported when the plan runs (a raw stream never pays
#: for qemu-img's helpers); archive and blank are carried out by the engine itself
_RUNNERS = {
    PlanName.STREAM: "stream", PlanName.RANGES: "extents", PlanName.EXTENTS: "extents",
    PlanName.DELTA: "extents", PlanName.CONVERT: "convert", PlanName.STAGED: "staged",
}


def runner(name: PlanName) -> Callable[..., Any]:
    """The `run` function of the plan's module."""
    module = importlib.import_module(f"{__name__}.{_RUNNERS[name]}")
    run: Callable[..., Any] = module.run
    return run

#: formats with a native reader (disks/); the others need qemu-img
NATIVE_FORMATS = ("qcow2", "vmdk")


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What the source offers, as far as the plan cares."""

    random_access: bool
    size: int | None
    sequential_reason: str | None = None
    #: the block count and largest block of a single xz layer over a ranged source (read from
    #: its index), when it can be decoded block by block; 0 otherwise
    xz_blocks: int = 0
    #: why a blank disk: the source kind names no data
    blank: bool = False
    #: the source has a map of data and zero extents (the imageio daemon, VDDK's block status)
    extent_map: bool = False
    #: that map names only what changed since the previous checkpoint (a VDDK warm stage)
    changes_only: bool = False
    #: the source's own checksum must be verified (an OVA's manifest): read in order, as for
    #: a checksum the user gives
    checksum_required: bool = False
    #: a local regular file qemu-img can open by its path
    local_file: bool = False
    #: DEST takes the disk in order (standard output, a pipe, a character device)
    sequential_target: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    name: PlanName
    reason: str
    #: who turns the image into raw; None when nothing converts
    converter: Converter | None = None
    #: what the extent copier or a native streaming reader reads
    disk: DiskKind | None = None
    details: dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name}: {self.reason}"


def choose_plan(src: SourceFacts, image: ImageInfo | None, codecs: list[str],
                config: ImportConfig) -> Plan:
    """The plan for an import, with the reason; FormatError when no plan fits the data."""
    if src.blank:
        return Plan(PlanName.BLANK, "the source is blank: a new empty disk of the requested size")
    assert image is not None
    fmt = image.format
    if config.content_type is ContentType.ARCHIVE:
        if fmt != "tar":
            raise FormatError(f"--content-type archive needs a tar archive, but the data is {fmt}")
        return Plan(PlanName.ARCHIVE, "a tar archive is extracted member by member into the directory")
    if config.delta_of is not None:
        return _delta(src, image, codecs, config.delta_of)
    if fmt == "tar" and not config.tar_as_raw:
        raise FormatError("the data is a tar archive; use --content-type archive to extract it "
                          "into a directory")
    checksum = config.checksum is not None or src.checksum_required
    compressed = "+".join(codecs)
    fixed_vhd = fmt == "vhd" and image.details.get("type") == "fixed"
    if (config.output is not None and src.local_file and not codecs and not checksum
            and config.image_size is None and not fixed_vhd and fmt != "tar"):
        # -O from a local file: qemu-img reads it (inspected, its driver pinned, no backing
        # file) and writes the output format at once, with no raw copy in between
        return Plan(PlanName.CONVERT, f"-O {config.output.format} from a local {fmt} file: "
                    "qemu-img converts it directly, after the same inspection",
                    converter=Converter.QEMU_IMG, details={"local_file": True})
    if not image.needs_conversion or fixed_vhd:
        what = "a fixed VHD (raw data and a footer)" if fixed_vhd else f"{fmt} data"
        return _raw_plan(src, what, codecs, config)

    native_refused = _why_not_native(image, config)
    native = fmt in NATIVE_FORMATS and not native_refused
    converter = Converter.NATIVE if native else Converter.QEMU_IMG
    disk = DiskKind(fmt) if native else None
    suffix = f" ({native_refused})" if native_refused else ""

    why_stage = None
    if checksum:
        why_stage = ("the checksum covers the bytes in order" if native else
                     "a checksum must be verified before the target is written")
    elif not src.random_access:
        why_stage = src.sequential_reason or "the source does not serve byte ranges"
    elif codecs and src.xz_blocks <= 1:
        why_stage = f"{compressed}-compressed data cannot be read at random"
    if why_stage and native and src.sequential_target:
        # the streaming reader writes in the file's order, which need not be the disk's
        return Plan(PlanName.STAGED, f"{why_stage}, and DEST takes the disk in order: the "
                    f"{fmt} is staged in scratch space, then read natively in the disk's order",
                    converter=Converter.NATIVE, disk=disk)
    if why_stage and native:
        held = ("clusters that arrive before the table placing them are held (spilled to "
                "scratch beyond 64 MiB)" if fmt == "qcow2" else
                "grains are placed by the tables that precede them, or by their markers and "
                "checked against the tables at the end")
        return Plan(PlanName.STREAM, f"{why_stage}: the {fmt} is converted natively as it streams, in "
                    f"file order; {held}", converter=Converter.NATIVE, disk=disk)
    if why_stage:
        return Plan(PlanName.STAGED, f"{why_stage}; the image is staged in scratch space, then "
                    f"converted by {'the native reader' if native else 'qemu-img'}{suffix}",
                    converter=converter, disk=disk)
    inner = " inside a multi-block xz file" if codecs else ""
    if native:
        unit = "clusters" if fmt == "qcow2" else "grains"
        return Plan(PlanName.EXTENTS, f"{fmt}{inner} is read natively at random: data {unit} by "
                    f"parallel range reads, zero and unallocated {unit} become holes",
                    converter=Converter.NATIVE, disk=disk)
    return Plan(PlanName.CONVERT, f"{fmt}{inner} is converted by qemu-img reading it through an NBD "
                f"export of the source{suffix}", converter=Converter.QEMU_IMG)


def _why_not_native(image: ImageInfo, config: ImportConfig) -> str:
    """Why a format with a native reader goes to qemu-img ("" when it does not, or when the
    format has no native reader at all)."""
    if image.format not in NATIVE_FORMATS:
        return ""
    if config.converter == "qemu-img":
        return advice.converter()
    if image.details.get("extended_l2"):
        return ("the native reader does not read extended L2 entries (subclusters); qemu-img "
                "converts this image")
    if image.details.get("native_refused"):
        return f"{image.details['native_refused']}; qemu-img converts this image"
    return ""


def _raw_plan(src: SourceFacts, what: str, codecs: list[str], config: ImportConfig) -> Plan:
    """Raw data (raw, iso, a fixed VHD's data), maybe compressed: nothing converts it."""
    if config.checksum is not None or src.checksum_required:
        return Plan(PlanName.STREAM, f"{what} is decoded in order because the checksum covers "
                    "the bytes in order")
    if src.xz_blocks > 1:
        return Plan(PlanName.EXTENTS, f"the xz file has {src.xz_blocks} blocks: they are "
                    "decoded in parallel from ranged reads", disk=DiskKind.XZ)
    ranged = not codecs and src.random_access and src.size
    if ranged and src.extent_map:
        return Plan(PlanName.RANGES, f"{what} copied by the source's map of data and zero "
                    "extents: zero runs become holes, data runs are fetched on up to "
                    f"{config.connections} connections", disk=DiskKind.RAW)
    if ranged and config.connections > 1:
        return Plan(PlanName.RANGES, f"{what} from a source with byte ranges: "
                    f"{config.connections} connections fetch chunks at their offsets",
                    disk=DiskKind.RAW)
    if codecs:
        return Plan(PlanName.STREAM, f"{'+'.join(codecs)}-compressed {what} is decoded as it "
                    "arrives")
    why = src.sequential_reason or ("one connection asked for" if src.random_access
                                    else "the source does not serve byte ranges")
    return Plan(PlanName.STREAM, f"{what} is written as it arrives ({why})")


def _delta(src: SourceFacts, image: ImageInfo, codecs: list[str], previous: str) -> Plan:
    """A delta stage: only a qcow2 whose backing file is the previous checkpoint can be applied
    onto what that stage wrote (CDI's check and words)."""
    if image.format == "raw" and src.changes_only:
        return Plan(PlanName.DELTA, f"the areas changed since checkpoint {previous}, read by the "
                    "source's block status, are applied in place onto the disk the previous "
                    "stage wrote; nothing else is read or written", disk=DiskKind.RAW)
    if image.format != "qcow2":
        raise FormatError(f"a delta stage applies a qcow2 delta onto the disk of checkpoint "
                          f"{previous}, but the source holds {image.format}")
    backing = posixpath.basename(str(image.details.get("backing_file", "")))
    if backing != previous:
        raise FormatError(f"snapshot backing file '{backing}' does not match expected checkpoint "
                          f"'{previous}', unable to safely rebase snapshot")
    if codecs or not src.random_access:
        raise FormatError("a delta stage reads the qcow2 delta at random, but "
                          + (f"it is {'+'.join(codecs)}-compressed" if codecs else
                             src.sequential_reason or "the source does not serve byte ranges"))
    return Plan(PlanName.DELTA, f"a qcow2 delta on checkpoint {previous}: its allocated and zero "
                "clusters are applied in place onto the disk the previous stage wrote; nothing "
                "else is read or written", converter=Converter.NATIVE, disk=DiskKind.QCOW2)
