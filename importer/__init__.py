"""importer: move virtual-machine disk images into files and block devices, fast and safely."""

__version__ = "0.1.0"
