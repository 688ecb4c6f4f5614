"""What an import reports: the `-o json` result of the CLI and the pod's log line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ImportResult"]


@dataclass(slots=True)
class ImportResult:
    source: str
    destination: str
    target_kind: str  # file, block or directory
    format: str
    compression: list[str]
    virtual_size: int | None
    #: what DEST holds: raw, or the CLI's -O qcow2, vmdk or vhdx
    output_format: str = "raw"
    plan: str = ""  # plans/__init__.py: stream, ranges, extents, convert, staged, archive, blank
    plan_reason: str = ""
    converter: str | None = None  # native, qemu-img, or None when nothing converted
    staged_bytes: int = 0
    #: source bytes the import needed, each counted once (compressed bytes for a compressed
    #: source; for a sparse read only the headers and the data)
    bytes_read: int = 0
    #: every byte taken from the source: bytes_read plus re-reads and dropped read-ahead
    bytes_received: int = 0
    bytes_written: int = 0
    zero_bytes_skipped: int = 0
    preallocated: bool = False
    checksum: str | None = None
    #: labels the source carries for the caller (a container disk's KUBEVIRT_IO_ entries)
    labels: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The plan's name under its old key (kept one release for scripts that read it)."""
        return self.plan

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = self.plan  # deprecated alias of "plan"
        return out
