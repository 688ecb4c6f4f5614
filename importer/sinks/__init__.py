"""Sinks: where the bytes go (a file or block device, through the sparse raw writer or
qemu-img, or a directory for archive extraction)."""
