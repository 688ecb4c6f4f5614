"""oVirt / RHV disks through the engine and the imageio daemon (docs/pod-contract.md 4.5).

Opening the source logs in to the engine, finds the disk (and the snapshot of this stage of a
warm import), creates one download transfer and waits until it is `transferring`; the transfer
URL then serves the image with ranged GETs, and, for a raw download, a map of data and zero
extents. The engine plans the copy like any other source: a raw image from a source with an
extent map is copied by that map (zero runs become holes or zeroed ranges, data runs are read by
several connections, up to the daemon's max_readers); the qcow2 delta of a warm stage is read at
random by the native qcow2 reader and applied onto the existing disk.

The transfer is ended exactly once by the engine (Transactional): finalized after a committed
import, cancelled after a failure or a signal (sources/ovirt/transfer.py).

Download format as CDI asks for it: `raw` (the guest's data, whatever the disk's format), except
`cow` (the snapshot's own qcow2 volume) when both the current and the previous checkpoint are
set: that volume is the delta between them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable

from ..disks.base import Extent
from ..errors import SourceError, SourceNotFoundError
from ..settings import ImportConfig
from .base import SourceInfo
from .http import HttpSource
from .options import ImageioOptions
from .ovirt.daemon import read_extents, read_options
from .ovirt.engine_api import EngineClient
from .ovirt.transfer import TransferSession, TransferTimings

__all__ = ["ImageioSource"]

log = logging.getLogger(__name__)


class ImageioSource:
    def __init__(self, config: ImportConfig) -> None:
        opts = config.options
        if not isinstance(opts, ImageioOptions):
            raise SourceError("an imageio import needs the disk id (--disk-id, IMPORTER_DISK_ID)")
        if opts.previous_checkpoint and not opts.checkpoint:
            raise SourceError("previous checkpoint set without current")
        self._opts = opts
        self._engine = EngineClient(config.source, config.http)
        self._session = TransferSession(self._engine, TransferTimings(
            locked_wait=opts.locked_wait, locked_retry=opts.locked_retry,
            renew_after=opts.renew_after))
        self._http: HttpSource | None = None
        self._extents: list[Extent] | None = None
        self._max_readers = 1
        self._fmt = "raw"
        try:
            self._open(config)
        except BaseException:
            self.end(False)
            self.close()
            raise

    def _open(self, config: ImportConfig) -> None:
        opts = self._opts
        disk = self._engine.disk(opts.disk_id)
        if disk is None:
            raise SourceNotFoundError(f"disk {opts.disk_id} not found; check the disk id")
        snapshot = self._snapshot(disk.id, disk.storage_domains, disk.image_id)
        fmt = self._fmt = "cow" if opts.checkpoint and opts.previous_checkpoint else "raw"
        stage = ("a full copy" if not opts.checkpoint else
                 f"snapshot {opts.checkpoint}" + (f" as the delta from {opts.previous_checkpoint}"
                                                  if opts.previous_checkpoint else ""))
        log.info("oVirt disk %s (%s, %s, %d bytes): %s%s", disk.id, disk.name or "unnamed",
                 disk.format, disk.provisioned_size, stage,
                 " (final stage)" if opts.final else "")
        info = self._session.start(disk_id=disk.id, snapshot_id=snapshot, fmt=fmt)
        shown = f"imageio transfer {info.id}"  # the URL holds the ticket: never logged
        data_opts = dataclasses.replace(config.http, username=None, password=None, headers=())
        self._http = HttpSource(info.transfer_url, data_opts, shown=shown, auth_hint=(
            "the imageio daemon refused the transfer ticket: it expired or the transfer was "
            "cancelled on the engine; run the import again"))
        size = self._http.info().size
        options = read_options(self._http.connector, info.transfer_url, shown)
        self._max_readers = options.max_readers
        if fmt == "raw" and "extents" in options.features and size:
            self._extents = read_extents(self._http.connector, info.transfer_url, shown, size)
            zero = sum(e.length for e in self._extents if e.zero)
            log.info("%s: %d extents, %d of %d bytes read as zeros; up to %d readers", shown,
                     len(self._extents), zero, size, options.max_readers)
        http = self._http

        def small_read() -> None:
            http.read_at(0, 512)

        self._session.keep_alive(small_read)

    def _snapshot(self, disk_id: str, domains: tuple[str, ...], image_id: str) -> str | None:
        """The volume id of this stage's checkpoint (None: the disk's active layer): looked up
        among the disk snapshots of the disk's storage domains; the disk itself when its active
        volume is the checkpoint."""
        checkpoint = self._opts.checkpoint
        if not checkpoint:
            return None
        if not domains:
            raise SourceError(f"no storage domains listed for disk {disk_id}")
        for sd in domains:
            for snap in self._engine.disk_snapshots(sd):
                if snap.id == checkpoint:
                    log.info("checkpoint %s is a snapshot of disk %s in storage domain %s",
                             checkpoint, snap.disk_id or disk_id, sd)
                    return snap.id
        if image_id == checkpoint:
            log.info("checkpoint %s is the active volume of disk %s", checkpoint, disk_id)
            return None
        raise SourceNotFoundError(f"snapshot {checkpoint} not found: could not find snapshot "
                                  f"{checkpoint} on disk {disk_id}")

    # ------------------------------------------------------------------ Source

    def _data(self) -> HttpSource:
        if self._http is None:
            raise SourceError("the imageio transfer is not open")
        return self._http

    def info(self) -> SourceInfo:
        base = self._data().info()
        # a raw transfer is the guest's disk; a cow one is a qcow2 volume, to be inspected
        return dataclasses.replace(base, name=f"oVirt disk {self._opts.disk_id}",
                                   max_readers=self._max_readers, guest_data=self._fmt == "raw")

    def extent_map(self) -> list[Extent] | None:
        return self._extents

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        return _Touching(self._data().open_stream(offset), self._session.touch)

    def read_at(self, offset: int, size: int) -> bytes:
        data = self._data().read_at(offset, size)
        self._session.touch()
        return data

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        n = self._data().readinto_at(offset, buf)
        self._session.touch()
        return n

    def verify(self) -> None:
        pass

    def end(self, ok: bool) -> None:
        self._session.end(ok)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._session.end(False)  # a no-op when the engine already ended it
        self._engine.close()


class _Touching(io.RawIOBase):
    """The sequential stream, telling the transfer that it is in use."""

    def __init__(self, inner: io.RawIOBase, touch: Callable[[], None]) -> None:
        self._inner = inner
        self._touch = touch

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(b) or 0
        self._touch()
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()
