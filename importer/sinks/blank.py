"""Blank disks (IMPORTER_SOURCE=none, docs/pod-contract.md 4.8): a sparse or preallocated file, or a
block device zeroed when preallocation is asked for."""

from __future__ import annotations

import logging

from .target import Target

__all__ = ["create_blank"]

log = logging.getLogger(__name__)


def create_blank(target: Target, size: int, *, preallocate: bool) -> bool:
    """Returns whether preallocation was really applied."""
    if target.is_block:
        if not preallocate:
            log.info("blank block volume: nothing to write")
            return False
        with target.writing():
            target.write_zeros(0, target.capacity or 0)  # every byte: what preallocation promises
        return True
    with target.writing():
        target.set_size(size)
        if preallocate:
            target.preallocate(size)
    return preallocate
