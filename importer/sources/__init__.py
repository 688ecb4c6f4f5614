"""Sources: where the bytes come from. Each offers SourceInfo, a resumable stream and, when the
transport allows it, random access (see base.Source)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..config import ImportConfig
from .base import RandomAccessFile, Source, SourceInfo

__all__ = ["RandomAccessFile", "Source", "SourceInfo", "open_source"]


def open_source(config: ImportConfig) -> Source:
    scheme = urlsplit(config.source).scheme
    if config.source_kind == "registry" or scheme in ("docker", "oci-archive"):
        from .registry import RegistrySource

        return RegistrySource(config.source, config.http, arch=config.registry_arch,
                              auth_file=config.registry_auth_file)
    if config.source_kind == "s3" or scheme == "s3":
        from .s3 import S3Source

        return S3Source(config.source, config.http, endpoint=config.s3_endpoint,
                        region=config.s3_region)
    if config.source_kind == "gcs" or scheme == "gs":
        from .gcs import GcsSource, parse_gcs_url, xml_api_source

        if parse_gcs_url(config.source).endpoint is not None:  # not Google's: as CDI, plain GET
            return xml_api_source(config.source, config.http,
                                  credentials_file=config.gcs_credentials)
        return GcsSource(config.source, config.http, credentials_file=config.gcs_credentials)
    if scheme in ("http", "https"):
        from .http import HttpSource

        return HttpSource(config.source, config.http)
    from .file import FileSource

    path = unquote(urlsplit(config.source).path) if scheme == "file" else config.source
    return FileSource(Path(path))
