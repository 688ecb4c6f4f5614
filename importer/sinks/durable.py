"""The one way a finished target is made durable (issue 22): the file's data fsync'ed, the file
renamed onto its name without following a symlink there (rename(2) replaces the link itself),
and the directory that holds the name fsync'ed, so the rename survives a crash too. An import's
file (sinks/target.py), `-O`'s converted image (output_format.py) and an extracted archive's
directories (sinks/archive.py) all commit through here."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["commit_file", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """fsync a directory, opened without following a link at its name."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(written: Path, dest: Path, fd: int | None = None) -> None:
    """fsync `written` (through `fd` when the caller holds it open), rename it onto `dest` and
    fsync `dest`'s directory. OSError is left to the caller, which knows what it was
    committing."""
    if fd is not None:
        os.fsync(fd)
    else:
        own = os.open(written, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(own)
        finally:
            os.close(own)
    if written != dest:
        os.replace(written, dest)
        fsync_dir(dest.parent)
