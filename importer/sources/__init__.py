"""Sources: where the bytes come from. Each offers SourceInfo, a resumable stream and, when the
transport allows it, random access (see base.Source). Which kinds exist and how each is opened:
kinds.py."""

from __future__ import annotations

from .base import RandomAccessFile, Source, SourceInfo
from .kinds import open_source

__all__ = ["RandomAccessFile", "Source", "SourceInfo", "open_source"]
