"""The options of each kind of source, typed: an ImportConfig carries the one its source needs
(sources/kinds.py opens the source with it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["GcsOptions", "ImageioOptions", "RegistryOptions", "S3Options", "SourceOptions",
           "VddkOptions"]


@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint: str | None = None  # default AWS
    region: str | None = None  # default from the URL, else us-east-1


@dataclass(frozen=True, slots=True)
class GcsOptions:
    credentials: Path | None = None  # a service-account key file


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    #: architecture to pick from a multi-arch image index (default: the host's)
    arch: str | None = None
    #: docker/podman credentials file consulted for registry logins
    auth_file: Path | None = None
    #: the environment a credential helper (docker-credential-*) runs with: its keychain's
    #: HOME, D-Bus or GnuPG session, captured by the configuration layer
    helper_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ImageioOptions:
    """An oVirt disk (docs/pod-contract.md 4.5). The engine URL is the import's source; the user and
    password are the HTTP credentials."""

    disk_id: str
    #: the snapshot (volume id) this stage copies; None: the disk as it is now
    checkpoint: str | None = None
    #: the snapshot the previous stage copied: this stage downloads the delta between the two
    #: (a qcow2 whose backing file is that snapshot) and applies it onto the existing disk
    previous_checkpoint: str | None = None
    #: the last stage of a warm import (logged, as CDI does)
    final: bool = False
    #: how long a locked disk is waited for before the import fails (transient: retried later)
    locked_wait: float = 600.0
    locked_retry: float = 15.0
    #: renew the transfer ticket after this many idle seconds (CDI: 30)
    renew_after: float = 30.0


@dataclass(frozen=True, slots=True)
class VddkOptions:
    """A VMware disk (docs/pod-contract.md 4.6). The vCenter/ESXi URL is the import's source; the
    user and password are the HTTP credentials."""

    vm_uuid: str  # instance or BIOS UUID
    backing_file: str  # "[datastore] vm/vm.vmdk"
    thumbprint: str | None = None  # SHA-1 of vCenter's/ESXi's certificate
    #: the snapshot this stage copies (managed object id or name); None: the disk as it is
    checkpoint: str | None = None
    #: the previous stage's snapshot, or a change ID (`52 de ... 63/81`): only what changed
    #: since is copied, onto the existing disk
    previous_checkpoint: str | None = None
    final: bool = False
    libdir: Path = Path("/opt/vmware-vix-disklib-distrib")
    #: nbdkit's plugin: `vddk`, or the path of another build (a stand-in in tests)
    plugin: str = "vddk"
    config: Path | None = None  # VDDK's extra configuration (CDI's vddk-config-file)


SourceOptions = (S3Options | GcsOptions | RegistryOptions | ImageioOptions | VddkOptions
                 | None)
