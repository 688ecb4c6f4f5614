"""Blank disks (IMPORTER_SOURCE=none, cdi-contract.md 4.8): a sparse or preallocated file, or a
block device zeroed when preallocation is asked for."""

from __future__ import annotations

import logging
from pathlib import Path

from .target import Target

__all__ = ["create_blank"]

log = logging.getLogger(__name__)


def create_blank(dest: Path, size: int, *, block: bool, preallocate: bool) -> bool:
    """Returns whether preallocation was really applied."""
    target = Target(dest)
    if block:
        if not preallocate:
            log.info("blank block volume: nothing to write")
            return False
        target.open()
        try:
            size = target.capacity or 0
            target.write_zeros(0, size)  # every byte written: what preallocation promises
            target.commit()
        except BaseException:
            target.abort()
            raise
        return True
    target.open()
    try:
        target.set_size(size)
        if preallocate:
            target.preallocate(size)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return preallocate
