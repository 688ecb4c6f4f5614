"""The planner as a table (issue 22, item 4): what the source offers, what the detector found and
the options, in; the plan, its converter and disk, out. `choose_plan` is a pure function, so the
table needs no server: every decision `inspect` shows is here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from importer.checksum import ChecksumSpec
from importer.config import ContentType, ImportConfig
from importer.errors import FormatError
from importer.formats.headers import ImageInfo
from importer.plans import Converter, DiskKind, PlanName, SourceFacts, choose_plan
from importer.sources.options import ImageioOptions

BASE = ImportConfig(source="https://h/disk", dest=Path("/nowhere/d.img"))
RANGED = SourceFacts(random_access=True, size=1 << 30)
STREAMED = SourceFacts(random_access=False, size=None, sequential_reason="standard input is a pipe")
SHA = ChecksumSpec("sha256", "0" * 64)


def _img(fmt: str, **details: object) -> ImageInfo:
    return ImageInfo(fmt, 1 << 30, dict(details))


def _cfg(**changes: object) -> ImportConfig:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


N, Q = Converter.NATIVE, Converter.QEMU_IMG
ROWS = [
    # (case, source facts, image, codecs, config, (plan, converter, disk))
    ("raw, ranges", RANGED, _img("raw"), [], BASE, (PlanName.RANGES, None, DiskKind.RAW)),
    ("raw, one connection", RANGED, _img("raw"), [], _cfg(connections=1),
     (PlanName.STREAM, None, None)),
    ("raw, no ranges", STREAMED, _img("raw"), [], BASE, (PlanName.STREAM, None, None)),
    ("raw.gz", RANGED, _img("raw"), ["gzip"], BASE, (PlanName.STREAM, None, None)),
    ("raw.xz, blocks", dataclasses.replace(RANGED, xz_blocks=8), _img("raw"), ["xz"], BASE,
     (PlanName.EXTENTS, None, DiskKind.XZ)),
    ("raw, checksum", RANGED, _img("raw"), [], _cfg(checksum=SHA), (PlanName.STREAM, None, None)),
    ("raw, extent map", dataclasses.replace(RANGED, extent_map=True), _img("raw"), [],
     _cfg(connections=1), (PlanName.RANGES, None, DiskKind.RAW)),
    ("iso", RANGED, _img("iso"), [], BASE, (PlanName.RANGES, None, DiskKind.RAW)),
    ("fixed vhd", RANGED, _img("vhd", type="fixed"), [], BASE,
     (PlanName.RANGES, None, DiskKind.RAW)),
    ("qcow2, ranges", RANGED, _img("qcow2"), [], BASE, (PlanName.EXTENTS, N, DiskKind.QCOW2)),
    ("qcow2.gz", RANGED, _img("qcow2"), ["gzip"], BASE, (PlanName.STREAM, N, DiskKind.QCOW2)),
    ("qcow2, no ranges", STREAMED, _img("qcow2"), [], BASE, (PlanName.STREAM, N, DiskKind.QCOW2)),
    ("qcow2, checksum", RANGED, _img("qcow2"), [], _cfg(checksum=SHA),
     (PlanName.STREAM, N, DiskKind.QCOW2)),
    ("qcow2 in xz blocks", dataclasses.replace(RANGED, xz_blocks=4), _img("qcow2"), ["xz"], BASE,
     (PlanName.EXTENTS, N, DiskKind.QCOW2)),
    ("qcow2, subclusters", RANGED, _img("qcow2", extended_l2=True), [], BASE,
     (PlanName.CONVERT, Q, None)),
    ("qcow2, qemu-img asked", RANGED, _img("qcow2"), [], _cfg(converter="qemu-img"),
     (PlanName.CONVERT, Q, None)),
    ("qcow2, qemu-img asked, no ranges", STREAMED, _img("qcow2"), [], _cfg(converter="qemu-img"),
     (PlanName.STAGED, Q, None)),
    ("vmdk, ranges", RANGED, _img("vmdk"), [], BASE, (PlanName.EXTENTS, N, DiskKind.VMDK)),
    ("vmdk, stdin", STREAMED, _img("vmdk"), [], BASE, (PlanName.STREAM, N, DiskKind.VMDK)),
    ("vmdk.gz", RANGED, _img("vmdk"), ["gzip"], BASE, (PlanName.STREAM, N, DiskKind.VMDK)),
    ("vmdk, grains too large", RANGED, _img("vmdk", native_refused="2 MiB grains"), [], BASE,
     (PlanName.CONVERT, Q, None)),
    ("vmdk, grains too large, stdin", STREAMED, _img("vmdk", native_refused="2 MiB grains"), [],
     BASE, (PlanName.STAGED, Q, None)),
    ("vdi, ranges", RANGED, _img("vdi"), [], BASE, (PlanName.CONVERT, Q, None)),
    ("vdi.gz", RANGED, _img("vdi"), ["gzip"], BASE, (PlanName.STAGED, Q, None)),
    ("vhdx, checksum", RANGED, _img("vhdx"), [], _cfg(checksum=SHA), (PlanName.STAGED, Q, None)),
    ("tar as CDI's raw", RANGED, _img("tar"), [], _cfg(tar_as_raw=True),
     (PlanName.RANGES, None, DiskKind.RAW)),
    ("archive", STREAMED, _img("tar"), [], _cfg(content_type=ContentType.ARCHIVE),
     (PlanName.ARCHIVE, None, None)),
    ("blank", SourceFacts(False, None, blank=True), None, [], BASE, (PlanName.BLANK, None, None)),
    ("qcow2 delta", RANGED, _img("qcow2", backing_file="/v/snap-1"), [],
     _cfg(options=ImageioOptions("d", checkpoint="snap-2", previous_checkpoint="snap-1")),
     (PlanName.DELTA, N, DiskKind.QCOW2)),
    ("changed areas", dataclasses.replace(RANGED, extent_map=True, changes_only=True),
     _img("raw"), [], _cfg(options=ImageioOptions("d", checkpoint="b", previous_checkpoint="a")),
     (PlanName.DELTA, None, DiskKind.RAW)),
]


@pytest.mark.parametrize(("facts", "image", "codecs", "config", "want"),
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_the_plan_for_each_situation(facts: SourceFacts, image: ImageInfo | None,
                                     codecs: list[str], config: ImportConfig,
                                     want: tuple[PlanName, Converter | None, DiskKind | None]
                                     ) -> None:
    plan = choose_plan(facts, image, codecs, config)
    assert (plan.name, plan.converter, plan.disk) == want
    assert plan.reason and plan.describe().startswith(f"{plan.name}: ")


REFUSED = [
    ("a tar as a disk", RANGED, _img("tar"), [], BASE, "use --content-type archive"),
    ("archive of a qcow2", RANGED, _img("qcow2"), [], _cfg(content_type=ContentType.ARCHIVE),
     "needs a tar archive"),
    ("delta on another checkpoint", RANGED, _img("qcow2", backing_file="snap-0"), [],
     _cfg(options=ImageioOptions("d", checkpoint="snap-2", previous_checkpoint="snap-1")),
     "does not match expected checkpoint"),
    ("compressed delta", RANGED, _img("qcow2", backing_file="snap-1"), ["gzip"],
     _cfg(options=ImageioOptions("d", checkpoint="snap-2", previous_checkpoint="snap-1")),
     "gzip-compressed"),
    ("raw delta without a map", RANGED, _img("raw"), [],
     _cfg(options=ImageioOptions("d", checkpoint="b", previous_checkpoint="a")),
     "applies a qcow2 delta"),
]


@pytest.mark.parametrize(("facts", "image", "codecs", "config", "words"),
                         [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_what_no_plan_fits_is_refused_with_the_reason(facts: SourceFacts, image: ImageInfo,
                                                      codecs: list[str], config: ImportConfig,
                                                      words: str) -> None:
    with pytest.raises(FormatError, match=words):
        choose_plan(facts, image, codecs, config)
