"""VMware disks through VDDK (docs/pod-contract.md 4.6): the inventory through pyvmomi, the data
through nbdkit's vddk plugin and our NBD client (disks/nbd.py).

Opening the source finds the VM and the disk, the snapshot of this stage and, for a later stage
of a warm import, the areas changed since the previous checkpoint (a change ID, or the change ID
the previous snapshot's disk recorded), then starts nbdkit on the disk (or the snapshot's copy of
it). The engine then copies it like any guest disk with a map: a full copy by block status
(zero runs become holes or zeroed ranges, data runs read on several NBD connections), a delta
stage by the block status of the changed areas only, applied onto the existing disk.
"""

from __future__ import annotations

import io
import logging
import platform
import re
from typing import TYPE_CHECKING

from ..disks.base import Extent
from ..disks.nbd import NbdDisk
from ..errors import SourceError
from ..settings import ImportConfig
from .base import SequentialReader, SourceInfo, read_via_readinto
from .options import VddkOptions

if TYPE_CHECKING:
    from .vmware.nbdkit_vddk import VddkExport

__all__ = ["VddkSource"]

log = logging.getLogger(__name__)

#: CDI's pattern for a VMware change ID, e.g. `52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81`
CHANGE_ID = re.compile(r"([0-9a-fA-F]{2}\s?)*-([0-9a-fA-F]{2}\s?)*\/([0-9a-fA-F]*)")
#: largest read VDDK serves at once: from ESXi, and (smaller) through vCenter (CDI's values)
MAX_READ_ESX, MAX_READ_VC = 23 << 20, 2 << 20


class VddkSource:
    def __init__(self, config: ImportConfig) -> None:
        machine = platform.machine().lower()
        if machine in ("aarch64", "arm64", "s390x"):
            arch = "arm64" if machine == "aarch64" else machine
            raise SourceError(f"the {arch} architecture does not support VDDK")
        opts = config.options
        if not isinstance(opts, VddkOptions):
            raise SourceError("a VDDK import needs the VM's UUID and the disk's backing file")
        if opts.previous_checkpoint and not opts.checkpoint:
            raise SourceError("previous checkpoint set without current")
        self._opts = opts
        self._export: VddkExport | None = None
        self._disk: NbdDisk | None = None
        self._map: list[Extent] | None = None
        from .vmware.inventory import VSphere  # pyvmomi: only on this path

        sphere = VSphere(config.source, config.http.username or "", config.http.password or "",
                         thumbprint=opts.thumbprint, ca_dirs=config.http.ca_dirs,
                         insecure=config.http.insecure)
        try:
            self._open(config, sphere)
        except BaseException:
            self.close()
            raise
        finally:
            sphere.close()  # nbdkit holds its own session from here

    def _open(self, config: ImportConfig, sphere: object) -> None:
        from .vmware.inventory import VSphere
        from .vmware.nbdkit_vddk import VddkExport, VddkPluginArgs

        assert isinstance(sphere, VSphere)
        opts = self._opts
        vm = sphere.find_vm(opts.vm_uuid)
        disk = sphere.find_disk(vm, opts.backing_file)
        snapshot = sphere.find_snapshot(vm, opts.checkpoint) if opts.checkpoint else None
        file = opts.backing_file
        areas: list[tuple[int, int]] | None = None
        if snapshot is not None:
            current = sphere.snapshot_disk(snapshot, disk)
            file = current.backing.fileName
            log.info("Set disk file name from current snapshot: %s", file)
            if opts.previous_checkpoint:
                change_id = self._change_id(sphere, vm, disk, opts.previous_checkpoint)
                areas = list(sphere.changed_areas(vm, snapshot, current, change_id))
                log.info("%d areas (%d bytes) changed since %s", len(areas),
                         sum(n for _, n in areas), opts.previous_checkpoint)
        self._export = VddkExport(VddkPluginArgs(
            server=sphere.host, user=config.http.username or "",
            password=config.http.password or "", thumbprint=opts.thumbprint or "",
            moref=vm._moId, file=file, libdir=opts.libdir, plugin=opts.plugin,
            snapshot=snapshot._moId if snapshot is not None else None, config=opts.config))
        max_read = MAX_READ_VC if sphere.is_vcenter else MAX_READ_ESX
        if sphere.is_vcenter:
            log.info("Connected to vCenter, restricting read request size to %d.", max_read)
        self._disk = NbdDisk(self._export.socket, max_read=max_read, areas=areas)
        stage = ("a full copy" if areas is None else
                 f"the changes since {opts.previous_checkpoint}")
        log.info("VMware disk %s (%d bytes)%s: %s%s", file, self._disk.size,
                 f" at snapshot {opts.checkpoint}" if opts.checkpoint else "", stage,
                 " (final stage)" if opts.final else "")

    @staticmethod
    def _change_id(sphere: object, vm: object, disk: object, previous: str) -> str:
        """The change ID to ask changes since: the previous checkpoint itself when it is one,
        else the one the previous snapshot's copy of the disk recorded."""
        from .vmware.inventory import VSphere

        assert isinstance(sphere, VSphere)
        if CHANGE_ID.fullmatch(previous.strip()):
            return previous
        prior = sphere.snapshot_disk(sphere.find_snapshot(vm, previous), disk)
        change_id = getattr(prior.backing, "changeId", None)
        if not change_id:
            raise SourceError(f"snapshot {previous} recorded no change ID for disk "
                              f"{prior.backing.fileName}: changed block tracking is off for "
                              "this VM; enable it (ctkEnabled) before the first snapshot")
        return str(change_id)

    # ------------------------------------------------------------------ Source

    def _nbd(self) -> NbdDisk:
        if self._disk is None:
            raise SourceError("the VDDK export is not open")
        return self._disk

    def info(self) -> SourceInfo:
        disk = self._nbd()
        details: dict[str, object] = {}
        if self._export is not None:
            details["vddkInfo"] = {"Version": self._export.version, "Host": self._export.host}
        return SourceInfo(size=disk.size, random_access=True, name=self._opts.backing_file,
                          guest_data=True, changes_only=not disk.complete, details=details)

    def extent_map(self) -> list[Extent] | None:
        if self._map is None:
            self._map = list(self._nbd().extents())
        return self._map

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        return SequentialReader(self.readinto_at, offset)

    def read_at(self, offset: int, size: int) -> bytes:
        return read_via_readinto(self, offset, size)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        try:
            return self._nbd().readinto_at(offset, buf)
        except SourceError as exc:
            if self._export is not None and self._export.exited(within=1.0):
                raise SourceError(f"nbdkit stopped serving the VMware disk: "
                                  f"{self._export.failure()}") from exc
            raise

    def verify(self) -> None:
        pass

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
        if self._export is not None:
            self._export.stop()

