"""Every kind of source in one table: its URL schemes, its pod name and variables, its typed
options and how it is opened. The CLI's `--source` choices, the configuration's scheme check,
the pod's IMPORTER_SOURCE check and `open_source` all read this table, so a new kind of source
is its own module plus one entry here.

Nothing here imports a source module at load time: each opener imports its module when called
(boto3, google-cloud-storage and oras cost tens of milliseconds that other imports never pay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..errors import SourceError
from .options import (
    GcsOptions,
    ImageioOptions,
    RegistryOptions,
    S3Options,
    SourceOptions,
    VddkOptions,
)

if TYPE_CHECKING:
    from ..settings import ImportConfig
    from .base import Source

__all__ = ["KINDS", "SourceKind", "kind_for", "open_source", "pod_kind"]


@dataclass(frozen=True, slots=True)
class SourceKind:
    name: str
    #: URL schemes that name this kind without --source ("" is a local path)
    schemes: tuple[str, ...]
    #: IMPORTER_SOURCE value in the pod (None: not a pod source)
    pod_name: str | None
    #: the pod variables this kind reads beyond the common ones (documentation and `pod --help`)
    pod_variables: tuple[str, ...]
    #: opens it; None while the kind is announced but not built yet
    opener: Callable[[ImportConfig], Source] | None
    #: what `--source NAME` may force when the scheme cannot tell (an https S3 endpoint)
    selectable: bool = True
    #: the kind's options from the pod's environment (and its filesystem root, for paths)
    pod_options: Callable[[Mapping[str, str], Path], SourceOptions] | None = None


def _gcs_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    key = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    return GcsOptions(root / key.lstrip("/") if key else None)


def _registry_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    return RegistryOptions(env.get("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE") or None)


def _needs(extra: str, exc: ImportError) -> Exception:
    """The one-line answer to a source kind whose SDK is not installed."""
    from ..errors import ConfigError

    return ConfigError(f"the {extra} source needs {exc.name or 'a library'} (not installed): "
                       f"pip install 'importer[{extra}]' (or importer[all])")


def _imageio_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    return ImageioOptions(
        disk_id=env.get("IMPORTER_DISK_ID", ""),
        checkpoint=env.get("IMPORTER_CURRENT_CHECKPOINT") or None,
        previous_checkpoint=env.get("IMPORTER_PREVIOUS_CHECKPOINT") or None,
        final=env.get("IMPORTER_FINAL_CHECKPOINT", "").lower() == "true")


def _imageio(config: ImportConfig) -> Source:
    from .imageio import ImageioSource

    return ImageioSource(config)


def _vddk_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    # CDI's test hook: a stand-in plugin at /opt/testing replaces nbdkit's vddk plugin
    standin = root / "opt" / "testing" / "libvddk-test-plugin.so"
    config = root / "vddk-args" / "vddk-config-file"
    return VddkOptions(
        vm_uuid=env.get("IMPORTER_UUID", ""), backing_file=env.get("IMPORTER_BACKING_FILE", ""),
        thumbprint=env.get("IMPORTER_THUMBPRINT") or None,
        checkpoint=env.get("IMPORTER_CURRENT_CHECKPOINT") or None,
        previous_checkpoint=env.get("IMPORTER_PREVIOUS_CHECKPOINT") or None,
        final=env.get("IMPORTER_FINAL_CHECKPOINT", "").lower() == "true",
        libdir=root / "opt" / "vmware-vix-disklib-distrib",
        plugin=str(standin) if standin.exists() else "vddk",
        config=config if config.is_file() else None)


def _vddk(config: ImportConfig) -> Source:
    from .vddk import VddkSource

    try:
        import pyVmomi  # noqa: F401 - imported by the source when it connects
    except ImportError as exc:
        raise _needs("vmware", exc) from exc
    return VddkSource(config)


def _http(config: ImportConfig) -> Source:
    from .http import HttpSource

    return HttpSource(config.source, config.http)


def _s3(config: ImportConfig) -> Source:
    try:
        from .s3 import S3Source
    except ImportError as exc:
        raise _needs("s3", exc) from exc

    opts = config.options if isinstance(config.options, S3Options) else S3Options()
    return S3Source(config.source, config.http, endpoint=opts.endpoint, region=opts.region)


def _gcs(config: ImportConfig) -> Source:
    try:
        from .gcs import GcsSource, parse_gcs_url, xml_api_source
    except ImportError as exc:
        raise _needs("gcs", exc) from exc

    opts = config.options if isinstance(config.options, GcsOptions) else GcsOptions()
    if parse_gcs_url(config.source).endpoint is not None:  # not Google's: as CDI, plain GET
        return xml_api_source(config.source, config.http, credentials_file=opts.credentials)
    return GcsSource(config.source, config.http, credentials_file=opts.credentials)


def _registry(config: ImportConfig) -> Source:
    try:
        from .registry import RegistrySource
    except ImportError as exc:
        raise _needs("registry", exc) from exc

    opts = config.options if isinstance(config.options, RegistryOptions) else RegistryOptions()
    return RegistrySource(config.source, config.http, arch=opts.arch, auth_file=opts.auth_file,
                          helper_env=dict(opts.helper_env))


def _file(config: ImportConfig) -> Source:
    import io
    import os
    import stat

    from .file import FileSource
    from .once import StreamSource

    if config.source == "-":  # standard input: a file redirected in, or a pipe
        try:
            mode = os.fstat(0).st_mode
        except OSError:
            raise SourceError("standard input is closed, so SOURCE - has nothing to read; "
                              "redirect a file or a pipe into it, or name the image") from None
        if stat.S_ISREG(mode):
            return FileSource(Path("/proc/self/fd/0"))
        if stat.S_ISDIR(mode):
            raise SourceError("standard input is a directory; redirect an image file into it")
        return StreamSource(io.FileIO(0, closefd=False), None, "standard input",
                            reason="standard input is a pipe, which cannot be read twice or "
                                   "at random")

    scheme = urlsplit(config.source).scheme
    path = Path(unquote(urlsplit(config.source).path) if scheme == "file" else config.source)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = 0  # FileSource names what is missing
    except OSError as exc:
        raise SourceError(f"cannot open source file {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(mode):
        raise SourceError(f"source {path} is a directory; name the image file inside it")
    if stat.S_ISFIFO(mode):  # a named pipe, or a shell's <(command): read once, in order
        return StreamSource(io.FileIO(path, "rb"), None, str(path),
                            reason=f"{path} is a pipe, which cannot be read twice or at random")
    if stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
        raise SourceError(f"source {path} is a character device or socket, which has no end "
                          "to import to; name an image file, a block device or a pipe")
    return FileSource(path)


_COMMON_HTTP = ("IMPORTER_ENDPOINT", "IMPORTER_ACCESS_KEY_ID", "IMPORTER_SECRET_KEY",
                "IMPORTER_CERT_DIR", "INSECURE_TLS")

KINDS: tuple[SourceKind, ...] = (
    SourceKind("http", ("http", "https"), "http",
               (*_COMMON_HTTP, "IMPORTER_EXTRA_HEADER_*", "IMPORTER_PULL_METHOD",
                "IMPORTER_READY_FILE", "IMPORTER_DONE_FILE"), _http),
    SourceKind("s3", ("s3",), "s3", _COMMON_HTTP, _s3,
               pod_options=lambda env, root: S3Options()),
    SourceKind("gcs", ("gs",), "gcs", ("IMPORTER_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS",
                                       "IMPORTER_CERT_DIR", "INSECURE_TLS"), _gcs,
               pod_options=_gcs_pod),
    SourceKind("registry", ("docker", "oci-archive", "oci", "docker-archive"), "registry",
               (*_COMMON_HTTP, "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE"), _registry,
               pod_options=_registry_pod),
    SourceKind("file", ("file", ""), None, (), _file, selectable=False),
    # the engine's https URL names it only with --source imageio
    SourceKind("imageio", (), "imageio", (*_COMMON_HTTP, "IMPORTER_DISK_ID",
                                          "IMPORTER_CURRENT_CHECKPOINT",
                                          "IMPORTER_PREVIOUS_CHECKPOINT",
                                          "IMPORTER_FINAL_CHECKPOINT"), _imageio,
               pod_options=_imageio_pod),
    # vCenter's or ESXi's https URL names it only with --source vddk
    SourceKind("vddk", (), "vddk", (*_COMMON_HTTP, "IMPORTER_UUID", "IMPORTER_BACKING_FILE",
                                    "IMPORTER_THUMBPRINT", "IMPORTER_CURRENT_CHECKPOINT",
                                    "IMPORTER_PREVIOUS_CHECKPOINT", "IMPORTER_FINAL_CHECKPOINT"),
               _vddk, pod_options=_vddk_pod),
)
_BY_NAME = {k.name: k for k in KINDS}


def all_names() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS)


def selectable_names() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS if k.selectable and k.opener is not None)


def supported_schemes() -> tuple[str, ...]:
    return tuple(s for k in KINDS if k.opener is not None for s in k.schemes)


def kind_for(source: str, declared: str = "auto") -> SourceKind:
    """The kind `--source` declares, else the one the URL scheme names (KeyError: none)."""
    if declared not in ("auto", ""):
        return _BY_NAME[declared]
    scheme = urlsplit(source).scheme
    for k in KINDS:
        if scheme in k.schemes:
            return k
    raise KeyError(scheme)


def pod_kind(pod_name: str) -> SourceKind | None:
    return next((k for k in KINDS if k.pod_name == pod_name), None)


def open_source(config: ImportConfig) -> Source:
    kind = kind_for(config.source, config.source_kind)
    if kind.opener is None:
        from ..errors import SourceError

        raise SourceError(f"the {kind.name} source is not available in this version of importer")
    return kind.opener(config)
