"""Every kind of source in one table: its URL schemes, its pod name and variables, its typed
options and how it is opened, its own CLI flags (an argument group and how the parsed flags
become its options), the problems of its options, and the pip extra it needs. The CLI's
`--source` choices and flags, the configuration's scheme check and validation, the pod's
IMPORTER_SOURCE check and `open_source` all read this table, so a new kind of source is its own
module plus one entry here, or one `register()` call from its module (tests/sources/test_kinds.py
adds a kind that way, with no other file changed).

Nothing here imports a source module at load time: each opener imports its module when called
(boto3, google-cloud-storage and oras cost tens of milliseconds that other imports never pay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import SourceError
from .extras import needs_extra
from .openstack.secret import glance_options, glance_problems, read_secret
from .options import (
    GcsOptions,
    ImageioOptions,
    RegistryOptions,
    S3Options,
    SourceOptions,
    VddkOptions,
)

if TYPE_CHECKING:
    from ..settings import Front, ImportConfig, Problem
    from .base import Source

__all__ = ["KINDS", "CliSpec", "SourceKind", "kind_for", "open_source", "pod_kind", "register",
           "registered"]


@dataclass(frozen=True, slots=True)
class CliSpec:
    """A kind's own command-line flags: added as one argument group to `import` and `inspect`
    (`add_flags(group)`), and turned into the kind's options (`options(get)`, `get` giving a
    flag's value by its dest name: the CLI's parsed arguments, or the validator's keyword
    arguments). None: the validator builds them, as for the registry, whose credentials file
    comes from the environment."""

    title: str
    add_flags: Callable[[Any], None]
    options: Callable[[Callable[[str], Any]], SourceOptions] | None = None


#: (options, user name, front) -> the problems of a kind's options, named as the front names them
Problems = Callable[[SourceOptions, "str | None", "Front"], "list[Problem]"]


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
    #: its own CLI flags
    cli: CliSpec | None = None
    #: the problems of its options (both fronts)
    problems: Problems | None = None
    #: the pip extra that brings its libraries (`importer[EXTRA]`)
    extra: str | None = None
    #: one line for --help and the README's table
    help: str = ""


def _gcs_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    key = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    return GcsOptions(root / key.lstrip("/") if key else None)


def _registry_pod(env: Mapping[str, str], root: Path) -> SourceOptions:
    return RegistryOptions(env.get("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE") or None)


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
        raise needs_extra("vmware", exc) from exc
    return VddkSource(config)


def _glance(config: ImportConfig) -> Source:
    from .glance import GlanceSource

    return GlanceSource(config)


def _http(config: ImportConfig) -> Source:
    from .http import HttpSource

    return HttpSource(config.source, config.http)


def _s3(config: ImportConfig) -> Source:
    try:
        from .s3 import S3Source
    except ImportError as exc:
        raise needs_extra("s3", exc) from exc

    opts = config.options if isinstance(config.options, S3Options) else S3Options()
    return S3Source(config.source, config.http, endpoint=opts.endpoint, region=opts.region)


def _gcs(config: ImportConfig) -> Source:
    try:
        from .gcs import GcsSource, parse_gcs_url, xml_api_source
    except ImportError as exc:
        raise needs_extra("gcs", exc) from exc

    opts = config.options if isinstance(config.options, GcsOptions) else GcsOptions()
    if parse_gcs_url(config.source).endpoint is not None:  # not Google's: as CDI, plain GET
        return xml_api_source(config.source, config.http, credentials_file=opts.credentials)
    return GcsSource(config.source, config.http, credentials_file=opts.credentials)


def _registry(config: ImportConfig) -> Source:
    try:
        from .registry import RegistrySource
    except ImportError as exc:
        raise needs_extra("registry", exc) from exc

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


def _stage_problems(options: SourceOptions, username: str | None, front: Front, server: str
                    ) -> list[Problem]:
    """What the two VM sources ask alike: a user, and no previous checkpoint without a
    current one (CDI's words)."""
    from ..settings import Problem

    found = []
    if getattr(options, "previous_checkpoint", None) and not getattr(options, "checkpoint", None):
        found.append(Problem("checkpoint", f"previous checkpoint set without current "
                             f"({front.name('previous_checkpoint')} needs "
                             f"{front.name('checkpoint')})"))
    if not username:
        found.append(Problem("username", f"{server} needs a user: {front.name('username')} and "
                             "a password"))
    return found


def _imageio_problems(options: SourceOptions, username: str | None, front: Front
                      ) -> list[Problem]:
    from ..settings import Problem

    found = []
    if not isinstance(options, ImageioOptions) or not options.disk_id:
        found.append(Problem("disk_id", f"{front.name('disk_id')} is needed: the id of the oVirt "
                             "disk to import"))
    return found + _stage_problems(options, username, front, "the engine (e.g. admin@internal)")


def _vddk_problems(options: SourceOptions, username: str | None, front: Front
                   ) -> list[Problem]:
    from ..settings import Problem

    if not isinstance(options, VddkOptions):
        return [Problem("vm_uuid", "a VDDK import needs the VM's UUID and the disk's backing file")]
    found = []
    if not options.vm_uuid:
        found.append(Problem("vm_uuid", f"{front.name('vm_uuid')} is needed: the VM's instance "
                             "or BIOS UUID"))
    if not options.backing_file:
        found.append(Problem("backing_file", f"{front.name('backing_file')} is needed: the "
                             "disk's file, such as '[datastore] vm/vm.vmdk'"))
    if options.config is not None and not options.config.is_file():
        found.append(Problem("vddk_config", f"{front.setting('vddk_config', str(options.config))}"
                             ": no such file"))
    return found + _stage_problems(options, username, front, "vCenter or ESXi")


def _gcs_problems(options: SourceOptions, username: str | None, front: Front
                  ) -> list[Problem]:
    from ..settings import Problem

    key = getattr(options, "credentials", None)
    if key is not None and not Path(key).is_file():
        return [Problem("gcs_credentials", f"{front.name('gcs_credentials')} {key}: no such file")]
    return []


# ---------------------------------------------------------------- the kinds' own CLI flags

def _s3_flags(g: Any) -> None:
    g.add_argument("--s3-endpoint", metavar="URL",
                   help="S3 endpoint for s3:// URLs (default AWS); credentials from "
                        "--username/--password-file or the standard AWS chain, else anonymous")
    g.add_argument("--s3-region", metavar="REGION", help="S3 region (default from the URL)")


def _gcs_flags(g: Any) -> None:
    g.add_argument("--gcs-credentials", metavar="FILE",
                   help="GCS service-account key (default: Google's default credentials, "
                        "else anonymous)")


def _registry_flags(g: Any) -> None:
    g.add_argument("--arch", dest="registry_arch", metavar="ARCH",
                   help="architecture to pick from a multi-arch container image (default: "
                        "this host's)")
    g.add_argument("--registry-auth-file", "--authfile", metavar="FILE",
                   help="docker/podman credentials file (default: $REGISTRY_AUTH_FILE, "
                        "containers/auth.json, ~/.docker/config.json)")


def _imageio_flags(g: Any) -> None:
    g.add_argument("--disk-id", metavar="ID", help="the disk to import")


def _imageio_cli(get: Callable[[str], Any]) -> SourceOptions:
    return ImageioOptions(get("disk_id") or "", get("checkpoint") or None,
                          get("previous_checkpoint") or None)


def _vddk_flags(g: Any) -> None:
    g.add_argument("--vm-uuid", metavar="UUID", help="the VM's instance or BIOS UUID")
    g.add_argument("--backing-file", metavar="'[DS] VM/DISK.vmdk'", help="the disk, by its file")
    g.add_argument("--thumbprint", metavar="SHA1",
                   help="the SHA-1 thumbprint of vCenter's or ESXi's certificate")
    g.add_argument("--vddk-libdir", metavar="DIR",
                   help="where VDDK is (default /opt/vmware-vix-disklib-distrib)")
    g.add_argument("--vddk-plugin", metavar="NAME_OR_PATH",
                   help="nbdkit's plugin (default vddk; a path runs another build)")
    g.add_argument("--vddk-config", metavar="FILE", help="VDDK's extra configuration file")


def _vddk_cli(get: Callable[[str], Any]) -> SourceOptions:
    config = get("vddk_config")
    return VddkOptions(
        get("vm_uuid") or "", get("backing_file") or "", get("thumbprint") or None,
        get("checkpoint") or None, get("previous_checkpoint") or None,
        libdir=Path(get("vddk_libdir") or "/opt/vmware-vix-disklib-distrib"),
        plugin=get("vddk_plugin") or "vddk", config=Path(config) if config else None)


def _glance_flags(g: Any) -> None:
    g.add_argument("--image-id", metavar="ID", help="the Glance image to import")
    g.add_argument("--openstack-secret", metavar="FILE_OR_DIR",
                   help="the keys of CDI's OpenStack secret (authType, username, password, "
                        "projectName, applicationCredentialID, regionName, ...): a file of "
                        "KEY=VALUE lines, or a directory with a file per key")


def _glance_cli(get: Callable[[str], Any]) -> SourceOptions:
    secret = get("openstack_secret")
    return glance_options(get("image_id") or "", read_secret(Path(secret)) if secret else {})


_COMMON_HTTP = ("IMPORTER_ENDPOINT", "IMPORTER_ACCESS_KEY_ID", "IMPORTER_SECRET_KEY",
                "IMPORTER_CERT_DIR", "INSECURE_TLS")

KINDS: tuple[SourceKind, ...] = (
    SourceKind("http", ("http", "https"), "http",
               (*_COMMON_HTTP, "IMPORTER_EXTRA_HEADER_*", "IMPORTER_PULL_METHOD",
                "IMPORTER_READY_FILE", "IMPORTER_DONE_FILE"), _http,
               help="a URL: byte ranges used when offered"),
    SourceKind("s3", ("s3",), "s3", _COMMON_HTTP, _s3,
               pod_options=lambda env, root: S3Options(),
               cli=CliSpec("S3 (s3://BUCKET/KEY, or an https endpoint with --source s3)",
                           _s3_flags, lambda get: S3Options(get("s3_endpoint"), get("s3_region"))),
               extra="s3", help="an S3 object"),
    SourceKind("gcs", ("gs",), "gcs", ("IMPORTER_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS",
                                       "IMPORTER_CERT_DIR", "INSECURE_TLS"), _gcs,
               pod_options=_gcs_pod,
               cli=CliSpec("Google Cloud Storage (gs://BUCKET/OBJECT)", _gcs_flags,
                           lambda get: GcsOptions(Path(get("gcs_credentials"))
                                                  if get("gcs_credentials") else None)),
               problems=_gcs_problems, extra="gcs", help="a GCS object"),
    SourceKind("registry", ("docker", "oci-archive", "oci", "docker-archive"), "registry",
               (*_COMMON_HTTP, "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE"), _registry,
               pod_options=_registry_pod,
               cli=CliSpec("container disks (docker://, oci-archive:, oci:, docker-archive:)",
                           _registry_flags),
               extra="registry", help="a container disk"),
    SourceKind("file", ("file", ""), None, (), _file, selectable=False,
               help="a local file, block device, named pipe or standard input"),
    # the engine's https URL names it only with --source imageio
    SourceKind("imageio", (), "imageio", (*_COMMON_HTTP, "IMPORTER_DISK_ID",
                                          "IMPORTER_CURRENT_CHECKPOINT",
                                          "IMPORTER_PREVIOUS_CHECKPOINT",
                                          "IMPORTER_FINAL_CHECKPOINT"), _imageio,
               pod_options=_imageio_pod,
               cli=CliSpec("oVirt (--source imageio; SOURCE is the engine's API URL, "
                           "https://ENGINE/ovirt-engine/api)", _imageio_flags, _imageio_cli),
               problems=_imageio_problems, help="an oVirt disk"),
    # vCenter's or ESXi's https URL names it only with --source vddk
    SourceKind("vddk", (), "vddk", (*_COMMON_HTTP, "IMPORTER_UUID", "IMPORTER_BACKING_FILE",
                                    "IMPORTER_THUMBPRINT", "IMPORTER_CURRENT_CHECKPOINT",
                                    "IMPORTER_PREVIOUS_CHECKPOINT", "IMPORTER_FINAL_CHECKPOINT"),
               _vddk, pod_options=_vddk_pod,
               cli=CliSpec("VMware (--source vddk; SOURCE is vCenter's or ESXi's URL, "
                           "https://HOST/sdk)", _vddk_flags, _vddk_cli),
               problems=_vddk_problems, extra="vmware", help="a VMware disk"),
    # Keystone's URL names it only with --source glance; CDI's importer pod has no such source
    # (its openstack-populator program is ours too: openstack_populator.py)
    SourceKind("glance", (), None, (), _glance,
               cli=CliSpec("OpenStack Glance (--source glance; SOURCE is Keystone's URL, "
                           "https://KEYSTONE:5000/v3)", _glance_flags, _glance_cli),
               problems=glance_problems, help="an OpenStack Glance image"),
)
#: kinds added at run time by register() (a plug-in, a test's toy kind), after the built-in ones
_EXTRA: list[SourceKind] = []


def register(kind: SourceKind) -> None:
    """Add a kind of source; its name and schemes must be new."""
    taken = {k.name for k in registered()}
    schemes = {s for k in registered() for s in k.schemes}
    if kind.name in taken or schemes & set(kind.schemes):
        raise ValueError(f"source kind {kind.name!r} or one of its schemes is taken")
    _EXTRA.append(kind)


def registered() -> tuple[SourceKind, ...]:
    return (*KINDS, *_EXTRA)


def all_names() -> tuple[str, ...]:
    return tuple(k.name for k in registered())


def selectable_names() -> tuple[str, ...]:
    return tuple(k.name for k in registered() if k.selectable and k.opener is not None)


def supported_schemes() -> tuple[str, ...]:
    return tuple(s for k in registered() if k.opener is not None for s in k.schemes)


def kind_for(source: str, declared: str = "auto") -> SourceKind:
    """The kind `--source` declares, else the one the URL scheme names (KeyError: none)."""
    if declared not in ("auto", ""):
        return next(k for k in registered() if k.name == declared)
    scheme = urlsplit(source).scheme
    for k in registered():
        if scheme in k.schemes:
            return k
    raise KeyError(scheme)


def pod_kind(pod_name: str) -> SourceKind | None:
    return next((k for k in registered() if k.pod_name == pod_name), None)


def open_source(config: ImportConfig) -> Source:
    kind = kind_for(config.source, config.source_kind)
    if kind.opener is None:
        from ..errors import SourceError

        raise SourceError(f"the {kind.name} source is not available in this version of importer")
    return kind.opener(config)
