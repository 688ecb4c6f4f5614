"""Disks that can be read at random: the guest-visible bytes of an image, with a map of where
its data and its zeros are. The extent copier (plans/extents.py) copies any of them."""

from .base import Extent, NativeUnsupported, RandomAccessDisk, merge_extents

__all__ = ["Extent", "NativeUnsupported", "RandomAccessDisk", "merge_extents"]
