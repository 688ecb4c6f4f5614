"""The options of each kind of source, typed: an ImportConfig carries the one its source needs
(sources/kinds.py opens the source with it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["GcsOptions", "RegistryOptions", "S3Options", "SourceOptions"]


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


SourceOptions = S3Options | GcsOptions | RegistryOptions | None
