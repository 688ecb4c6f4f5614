"""The validated configuration every front-end builds and the core consumes.

This is the only module that reads the process environment (proxy variables, credentials given
by variable); everything below takes an ImportConfig. Validation collects every problem and
reports them together, naming the flag and the accepted values, so a user fixes a command line
in one go.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .checksum import ChecksumSpec, parse_checksum
from .errors import ConfigError
from .quantity import parse_quantity
from .sources.options import (
    GcsOptions,
    ImageioOptions,
    RegistryOptions,
    S3Options,
    SourceOptions,
    VddkOptions,
)

__all__ = [
    "CLI",
    "ContentType",
    "Front",
    "Header",
    "HttpOptions",
    "ImportConfig",
    "OutputSpec",
    "Problem",
    "build_config",
    "parse_header",
    "parse_image_size",
    "read_header_files",
    "split_userinfo",
    "validate_config",
]


#: "auto": the native reader where one exists (qcow2), qemu-img otherwise
CONVERTERS = ("auto", "qemu-img")
#: what --format may name (qemu-img's -f names; vhd is qemu's vpc)
INPUT_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso")
#: what a docker credential helper needs of the user's environment to reach its keychain
HELPER_ENV = ("HOME", "USER", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "GNUPGHOME",
              "PASSWORD_STORE_DIR", "PATH")
#: off_t is signed 64-bit: nothing larger can be a file size or a device offset
MAX_FILE_SIZE = (1 << 63) - 1


class ContentType(StrEnum):
    KUBEVIRT = "kubevirt"  # a disk image
    ARCHIVE = "archive"  # a tar to extract into a directory


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str
    secret: bool = False  # read from a file: never logged

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {'<redacted>' if self.secret else repr(self.value)})"


@dataclass(frozen=True, slots=True)
class HttpOptions:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: tuple[Header, ...] = ()
    ca_dir: Path | None = None
    #: more CA directories (the pod's /proxycerts) or files (--ca-file), trusted like ca_dir
    extra_ca_dirs: tuple[Path, ...] = ()
    insecure: bool = False
    #: scheme -> proxy URL and "no" -> bypass list, captured from the environment at start
    proxies: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 30.0
    #: seconds without a single byte before a connection is abandoned and resumed
    read_timeout: float = 120.0
    max_retries: int = 8
    retry_backoff: float = 1.0
    #: seconds a streak of failures may last before the import gives up (CDI gives up at once
    #: and lets the pod restart; hours of retries hide a dead server)
    retry_time: float = 30.0
    max_redirects: int = 10
    #: a transfer slower than low_speed_limit bytes in low_speed_time seconds is abandoned and
    #: resumed (curl's --speed-limit/--speed-time): a trickle never trips read_timeout
    low_speed_limit: int = 1024
    low_speed_time: float = 60.0
    #: quick retries for a name that does not resolve or a refused connection
    unreachable_retries: int = 2

    @property
    def ca_dirs(self) -> list[Path]:
        """Every CA directory to trust beside the system store."""
        return [d for d in (self.ca_dir, *self.extra_ca_dirs) if d is not None]

    def proxy_for(self, url: str) -> str | None:
        """The proxy for `url`, honouring no_proxy; loopback is never proxied (CDI quirk Q10)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return None
        proxies = dict(self.proxies)
        if proxies.get("no"):
            import urllib.request  # only with a bypass list: the module costs ~25 ms to import

            if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
                return None
        return proxies.get(parts.scheme)


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The CLI's -O: a format other than raw, written by qemu-img at `path` (a private working
    directory's file, renamed onto DEST by output_format.py). The pod always writes raw."""

    format: str
    compress: bool
    path: Path

    @property
    def qemu_options(self) -> tuple[str, ...]:
        """qemu-img convert's output options: qcow2's compressed clusters, vmdk's compressed
        form (streamOptimized)."""
        if not self.compress:
            return ("-O", self.format)
        if self.format == "vmdk":
            return ("-O", "vmdk", "-o", "subformat=streamOptimized")
        return ("-O", self.format, "-c")


@dataclass(frozen=True, slots=True)
class ImportConfig:
    source: str
    dest: Path
    content_type: ContentType = ContentType.KUBEVIRT
    image_size: int | None = None  # the resulting disk's size: grown to, never shrunk
    #: the most the image may need (virtual size); defaults to image_size. The pod sets it to the
    #: space CDI reports available, which may exceed the overhead-reduced image_size
    size_limit: int | None = None
    preallocation: bool = False
    checksum: ChecksumSpec | None = None
    scratch_dir: Path | None = None
    #: staging without scratch_dir is an error (the pod's scratch-space-required protocol)
    scratch_required: bool = False
    http: HttpOptions = field(default_factory=HttpOptions)
    #: qemu-img cache mode: None = choose (O_DIRECT when the target accepts it)
    cache_mode: str | None = None
    #: parallel ranged reads for random-access sources
    connections: int = 4
    #: what SOURCE is when its scheme cannot tell (a path-style S3 endpoint is plain https);
    #: a name of sources/kinds.py, "auto", or "blank" (a new empty disk)
    source_kind: str = "auto"
    #: the options of the source's kind (sources/options.py)
    options: SourceOptions = None
    #: a tar given as a disk image is written as raw bytes (CDI does, and its tests check the
    #: md5), instead of refused with advice to use the archive content type
    tar_as_raw: bool = False
    #: who converts formats other than raw: "auto" (the native reader where there is one,
    #: qemu-img otherwise) or "qemu-img" (always; for comparison and as a fallback)
    converter: str = "auto"
    #: --format: the image format the data must have (after decompression); raw is taken as
    #: it is, without looking at its bytes
    input_format: str | None = None
    #: -O: the plans that convert with qemu-img write this format at once (no raw copy)
    output: OutputSpec | None = None
    #: an archive may replace what its directory already holds (the pod's and the upload
    #: server's volumes; the CLI only with --force, as it replaces a file DEST)
    replace_existing: bool = True

    @property
    def delta_of(self) -> str | None:
        """The checkpoint a warm import's delta stage applies onto (the previous stage's); None
        for a full import. The target must exist: it is written in place."""
        return getattr(self.options, "previous_checkpoint", None) or None

    @property
    def capacity(self) -> int | None:
        """The most the target may take: the pod's available space, else --image-size."""
        return self.size_limit if self.size_limit is not None else self.image_size


def read_header_files(path: Path) -> list[Header]:
    """Headers from a file or a directory tree of files (the layout of CDI's /extraheaders).

    Each file holds one `Name: value` line. Dot files and dot directories (`..data` of a
    Kubernetes secret volume) are skipped; trailing newlines are stripped (CDI quirk Q9).
    """
    files: list[Path] = []
    if path.is_dir():
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    else:
        files = [path]
    headers = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read header file {f}: {exc.strerror}") from exc
        headers.append(parse_header(text, where=str(f), secret=True))
    return headers


def parse_header(text: str, *, where: str, secret: bool) -> Header:
    """One `Name: value` line, the one validator of both front-ends: CR or LF anywhere would
    let a value smuggle a second header (or a request) into what we send."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    bad_value = any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)
    bad_name = any(ord(c) <= 0x20 or c == "\x7f" for c in name)
    if not sep or not name or bad_name or bad_value:
        shown = "<redacted>" if secret else repr(text)
        raise ConfigError(f"invalid header in {where}: {shown}; expected one line 'Name: value'")
    return Header(name, value, secret)


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid setting: which field, the message naming it as the front-end does, and the
    bare reason (the pod words some reasons into CDI's exact termination messages)."""

    field: str
    text: str
    detail: str = ""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Front:
    """How a front-end names the settings in its messages (`--image-size` or
    `IMPORTER_IMAGE_SIZE`), and the few rules in which the CLI and the CDI pod differ."""

    names: Mapping[str, str]
    #: credentials in an http(s) URL: the pod uses them as basic auth (CDI's Go client does,
    #: and the controller passes such URLs); the CLI refuses them (process lists, shell history)
    url_credentials: bool = False
    #: the variable that may hold the password when no other was given
    password_variable: str | None = "IMPORTER_PASSWORD"
    #: the pod finds its destination from its volumes and checks it itself
    check_dest: bool = True
    #: IMPORTER_SOURCE names any kind of the table; `--source` only those it may force
    any_kind: bool = False

    #: how a message shows a setting's value: `--converter 'x'` or `IMPORTER_CONVERTER='x'`
    separator: str = " "

    def name(self, field: str) -> str:
        return self.names.get(field, field)

    def setting(self, field: str, value: object) -> str:
        return f"{self.name(field)}{self.separator}{value!r}"


CLI = Front({
    "source": "source", "content_type": "--content-type", "image_size": "--image-size",
    "checksum": "--checksum", "cache_mode": "--cache-mode", "converter": "--converter",
    "connections": "--connections", "max_retries": "--retries", "retry_time": "--retry-time",
    "read_timeout": "--read-timeout",
    "connect_timeout": "--connect-timeout", "password_file": "--password-file",
    "username": "--username", "headers": "--header", "ca_dir": "--ca-dir",
    "scratch_dir": "--scratch-dir", "source_kind": "--source", "registry_arch": "--arch",
    "ca_file": "--ca-file", "input_format": "--format",
    "gcs_credentials": "--gcs-credentials", "registry_auth_file": "--registry-auth-file",
    "disk_id": "--disk-id", "checkpoint": "--checkpoint",
    "previous_checkpoint": "--previous-checkpoint", "vm_uuid": "--vm-uuid",
    "backing_file": "--backing-file", "thumbprint": "--thumbprint",
    "vddk_config": "--vddk-config",
})


def build_config(**values: Any) -> ImportConfig:
    """validate_config for a front-end with nothing of its own to add: the config, or one
    ConfigError listing every problem."""
    config, problems = validate_config(**values)
    if config is None:
        raise ConfigError("; ".join(p.text for p in problems))
    return config


def validate_config(
    *,
    source: str,
    dest: str | Path,
    content_type: str = "kubevirt",
    image_size: str | None = None,
    preallocation: bool = False,
    checksum: str | None = None,
    scratch_dir: str | Path | None = None,
    scratch_required: bool = False,
    username: str | None = None,
    password: str | None = None,
    password_file: str | None = None,
    headers: Sequence[str] = (),
    header_files: Sequence[str | Path] = (),
    parsed_headers: Sequence[Header] = (),
    ca_dir: str | Path | None = None,
    ca_file: str | None = None,
    extra_ca_dirs: Sequence[Path] = (),
    insecure: bool = False,
    cache_mode: str | None = None,
    connections: int = 4,
    max_retries: int = 8,
    retry_time: float = 30.0,
    read_timeout: float = 120.0,
    connect_timeout: float = 30.0,
    low_speed_limit: int = 1024,
    low_speed_time: float = 60.0,
    source_kind: str = "auto",
    s3_endpoint: str | None = None,
    s3_region: str | None = None,
    gcs_credentials: str | None = None,
    registry_arch: str | None = None,
    registry_auth_file: str | None = None,
    disk_id: str | None = None,
    checkpoint: str | None = None,
    previous_checkpoint: str | None = None,
    vm_uuid: str | None = None,
    backing_file: str | None = None,
    thumbprint: str | None = None,
    vddk_libdir: str | None = None,
    vddk_plugin: str | None = None,
    vddk_config: str | None = None,
    options: SourceOptions = None,
    converter: str = "auto",
    input_format: str | None = None,
    tar_as_raw: bool = False,
    environ: Mapping[str, str] | None = None,
    front: Front = CLI,
) -> tuple[ImportConfig | None, list[Problem]]:
    """The one validator of both front-ends: raw setting values into an ImportConfig, or None
    and every problem found (each named as `front` names it). `environ` defaults to the process
    environment (proxies, the password variable); `options` replaces the per-kind flags (the
    pod reads its kind's variables through sources/kinds.py)."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    name = front.name

    def problem(field: str, text: str, detail: str = "") -> None:
        problems.append(Problem(field, text, detail or text))

    from .sources.kinds import all_names, kind_for, selectable_names, supported_schemes

    url_user = url_password = None
    if front.url_credentials:
        source, url_user, url_password = split_userinfo(source)
    try:
        parts = urlsplit(source)
    except ValueError as exc:  # the source itself is not shown: it may hold a password
        raise ConfigError(f"{name('source')} is not a valid URL ({exc}); check its brackets "
                          "and characters (an IPv6 host is written http://[::1]:8080/...)"
                          ) from None
    kind_name = "auto"
    if not source:
        problem("source", f"{name('source')} is empty: it must name the image to import")
    kinds = all_names() if front.any_kind else selectable_names()
    if source_kind != "auto" and source_kind not in kinds:
        problem("source_kind", f"{front.setting('source_kind', source_kind)}: use {', '.join(kinds)}")
    else:
        with contextlib.suppress(KeyError):  # an unknown scheme is reported below
            kind_name = kind_for(source, source_kind).name
    registry = kind_name == "registry"
    if registry and source:
        from .sources.oci.reference import parse_reference

        try:
            parse_reference(source)
        except ConfigError as exc:
            problem("source", str(exc))
    if registry_arch is not None and not re.fullmatch(r"[a-z0-9_]{1,32}", registry_arch):
        problem("registry_arch", f"{front.setting('registry_arch', registry_arch)}: use an OCI "
                "architecture such as amd64, arm64, s390x or ppc64le")
    if gcs_credentials and not Path(gcs_credentials).is_file():
        problem("gcs_credentials", f"{name('gcs_credentials')} {gcs_credentials}: no such file")
    if not source:
        pass
    elif parts.scheme not in supported_schemes():
        from .sources.oci.reference import ARCHIVE_TRANSPORTS

        shown = ", ".join(f"{s}://" if s not in ("", *ARCHIVE_TRANSPORTS)
                          else (s + ":" if s else "a local path")
                          for s in supported_schemes())
        problem("source", f"{front.setting('source', source)}: unsupported scheme {parts.scheme!r}; "
                f"use {shown}")
    elif parts.scheme in ("http", "https") and not parts.hostname:
        problem("source", f"{front.setting('source', source)}: the URL has no host")

    try:
        ctype = ContentType(content_type)
    except ValueError:
        problem("content_type", f"{front.setting('content_type', content_type)}: use 'kubevirt' "
                "(a disk image) or 'archive'")
        ctype = ContentType.KUBEVIRT
    whole_disk = {"registry": "a container image", "imageio": "an oVirt disk",
                  "vddk": "a VMware disk"}
    if ctype is ContentType.ARCHIVE and kind_name in whole_disk:
        problem("content_type", f"{front.setting('content_type', 'archive')} is not possible "
                f"with {whole_disk[kind_name]}: its disk is imported as a disk image")

    size, size_problem = parse_image_size(image_size, name("image_size"))
    if size_problem:
        problems.append(size_problem)

    spec: ChecksumSpec | None = None
    if checksum:
        try:
            spec = parse_checksum(checksum)
        except ValueError as exc:
            problem("checksum", f"{name('checksum')}: {exc}", f"invalid checksum: {exc}")

    if cache_mode not in (None, "none", "writeback", "writethrough", "directsync", "unsafe"):
        problem("cache_mode", f"{front.setting('cache_mode', cache_mode)}: use none, writeback, "
                "writethrough or directsync")
    if input_format is not None and input_format not in INPUT_FORMATS:
        problem("input_format", f"{front.setting('input_format', input_format)}: use "
                f"{', '.join(INPUT_FORMATS)}")
    if converter not in CONVERTERS:
        problem("converter", f"{front.setting('converter', converter)}: use {' or '.join(CONVERTERS)}")
    if not 1 <= connections <= 32:
        problem("connections", f"{name('connections')} {connections}: use a number from 1 to 32")
    if max_retries < 0:
        problem("max_retries", f"{name('max_retries')} {max_retries}: use 0 or more")
    if not 0 <= retry_time < float("inf"):
        problem("retry_time", f"{name('retry_time')} {retry_time}: use 0 or more seconds")
    if read_timeout <= 0:
        problem("read_timeout", f"{name('read_timeout')} {read_timeout}: use a positive number "
                "of seconds")
    if connect_timeout <= 0:
        problem("connect_timeout", f"{name('connect_timeout')} {connect_timeout}: use a "
                "positive number of seconds")
    if low_speed_limit < 0 or low_speed_time <= 0:
        problem("low_speed", f"--low-speed-limit {low_speed_limit} / --low-speed-time "
                f"{low_speed_time}: use 0 or more bytes and a positive number of seconds")

    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problem("password_file", f"{name('password_file')} {password_file}: {exc.strerror}")
    if password is None and front.password_variable and env.get(front.password_variable):
        password = env[front.password_variable]
    if url_user is not None and username is None:
        username, password = url_user, url_password
    if password is not None and not username:
        problem("username", f"a password was given without {name('username')}")
    if parts.username and not username:
        problem("source", "credentials in the URL are not accepted (they would appear in logs "
                "and process lists): use --username and --password-file or IMPORTER_PASSWORD")

    all_headers: list[Header] = list(parsed_headers)
    for h in headers:
        try:
            all_headers.append(parse_header(h, where=name("headers"), secret=False))
        except ConfigError as exc:
            problem("headers", str(exc))
    for hf in header_files:
        try:
            all_headers += read_header_files(Path(hf))
        except ConfigError as exc:
            problem("headers", str(exc))

    ca_path = Path(ca_dir) if ca_dir else None
    if ca_path is not None and not ca_path.is_dir():
        problem("ca_dir", f"{front.setting('ca_dir', str(ca_dir))}: not a directory (give the directory "
                "holding the CA files)")

    extra_cas = list(extra_ca_dirs)
    if ca_file:
        if Path(ca_file).is_file():
            extra_cas.append(Path(ca_file))
        else:
            problem("ca_file", f"{front.setting('ca_file', ca_file)}: no such file")

    scratch = Path(scratch_dir) if scratch_dir else None
    if scratch is not None and not scratch.is_dir():
        problem("scratch_dir", f"{name('scratch_dir')} {scratch_dir}: not a directory")

    dest_path = Path(dest)
    if not front.check_dest or not dest:
        pass  # the pod checks its volumes; inspect has no destination
    elif ctype is ContentType.ARCHIVE:
        if dest_path.exists() and not dest_path.is_dir():
            problem("dest", f"destination {dest}: --content-type archive extracts into a directory")
    elif dest_path.is_dir():
        problem("dest", f"destination {dest} is a directory; give a file path or a block device")
    elif not dest_path.exists() and not dest_path.parent.is_dir():
        problem("dest", f"destination {dest}: the directory {dest_path.parent} does not exist")

    auth_file: Path | None = None
    if registry_auth_file:
        auth_file = Path(registry_auth_file)
        if not auth_file.is_file():
            problem("registry_auth_file", f"{name('registry_auth_file')} {registry_auth_file}: "
                    "no such file")
    elif registry and options is None:
        auth_file = default_registry_auth_file(env)

    if problems:
        return None, problems

    proxies = proxies_from_environment(os.environ)
    if environ is not None:  # an explicit environment replaces the process one entirely
        proxies = {
            k[:-6].lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v
        }
    http = HttpOptions(
        username=username,
        password=password,
        headers=tuple(all_headers),
        ca_dir=ca_path,
        extra_ca_dirs=tuple(extra_cas),
        insecure=insecure,
        proxies=proxies,
        max_retries=max_retries,
        retry_time=retry_time,
        read_timeout=read_timeout,
        connect_timeout=connect_timeout,
        low_speed_limit=low_speed_limit,
        low_speed_time=low_speed_time,
    )
    if options is None:
        options = _source_options(kind_name, s3_endpoint=s3_endpoint, s3_region=s3_region,
                                  gcs_credentials=gcs_credentials, registry_arch=registry_arch,
                                  registry_auth_file=auth_file)
        if kind_name == "imageio":
            options = ImageioOptions(disk_id or "", checkpoint or None,
                                     previous_checkpoint or None)
        elif kind_name == "vddk":
            options = VddkOptions(
                vm_uuid or "", backing_file or "", thumbprint or None, checkpoint or None,
                previous_checkpoint or None,
                libdir=Path(vddk_libdir or "/opt/vmware-vix-disklib-distrib"),
                plugin=vddk_plugin or "vddk",
                config=Path(vddk_config) if vddk_config else None)
    if kind_name == "imageio":
        problems += _imageio_problems(options, username, front)
    elif kind_name == "vddk":
        problems += _vddk_problems(options, username, front)
    if problems:
        return None, problems
    return ImportConfig(
        source=source,
        dest=dest_path,
        content_type=ctype,
        image_size=size,
        preallocation=preallocation,
        checksum=spec,
        scratch_dir=scratch,
        scratch_required=scratch_required,
        http=http,
        cache_mode=cache_mode,
        connections=connections,
        source_kind=kind_name if kind_name in ("registry", "s3", "gcs") else source_kind,
        options=options,
        tar_as_raw=tar_as_raw,
        converter=converter,
        input_format=input_format,
    ), []


def parse_image_size(value: str | None, name: str) -> tuple[int | None, Problem | None]:
    """A Kubernetes quantity that a file or a device can have."""
    if not value:
        return None, None
    try:
        size = parse_quantity(value)
    except ValueError as exc:
        return None, Problem("image_size", f"{name}: {exc}", str(exc))
    if size > MAX_FILE_SIZE:
        return None, Problem("image_size", f"{name} {value}: larger than any file or device "
                             f"Linux can address ({MAX_FILE_SIZE} bytes)")
    return size, None


def split_userinfo(endpoint: str) -> tuple[str, str | None, str | None]:
    """`http://user:pass@host/x` -> (`http://host/x`, user, pass), percent-decoded."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return endpoint, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return (urlunsplit(parts._replace(netloc=hostport)), unquote(user),
            unquote(password) if ":" in userinfo else None)


def _imageio_problems(options: SourceOptions, username: str | None, front: Front
                      ) -> list[Problem]:
    found = []
    if not isinstance(options, ImageioOptions) or not options.disk_id:
        found.append(Problem("disk_id", f"{front.name('disk_id')} is needed: the id of the oVirt "
                             "disk to import"))
    return found + _stage_problems(options, username, front, "the engine (e.g. admin@internal)")


def _vddk_problems(options: SourceOptions, username: str | None, front: Front
                   ) -> list[Problem]:
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


def _stage_problems(options: SourceOptions, username: str | None, front: Front, server: str
                    ) -> list[Problem]:
    """What the two VM sources ask alike: a user, and no previous checkpoint without a
    current one (CDI's words)."""
    found = []
    if getattr(options, "previous_checkpoint", None) and not getattr(options, "checkpoint", None):
        found.append(Problem("checkpoint", f"previous checkpoint set without current "
                             f"({front.name('previous_checkpoint')} needs "
                             f"{front.name('checkpoint')})"))
    if not username:
        found.append(Problem("username", f"{server} needs a user: {front.name('username')} and "
                             "a password"))
    return found


def _source_options(kind: str, *, s3_endpoint: str | None, s3_region: str | None,
                    gcs_credentials: str | None, registry_arch: str | None,
                    registry_auth_file: Path | None) -> SourceOptions:
    if kind == "s3":
        return S3Options(s3_endpoint, s3_region)
    if kind == "gcs":
        return GcsOptions(Path(gcs_credentials) if gcs_credentials else None)
    if kind == "registry":
        return RegistryOptions(registry_arch, registry_auth_file, tuple(
            (k, os.environ[k]) for k in HELPER_ENV if os.environ.get(k)))
    return None


def proxies_from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """scheme -> proxy from *_proxy variables, as urllib.request.getproxies_environment reads
    them (lower-case names win; HTTP_PROXY is ignored in a CGI request, httpoxy), without
    importing urllib.request (~25 ms of a small import's fixed cost)."""
    proxies: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name[:-6].lower()] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    return proxies


def default_registry_auth_file(env: Mapping[str, str]) -> Path | None:
    """Where podman, skopeo and docker keep registry logins, in their order of precedence:
    $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json,
    ~/.docker/config.json. The first that exists."""
    candidates = []
    if env.get("REGISTRY_AUTH_FILE"):
        candidates.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        candidates.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    if env.get("HOME"):
        candidates.append(Path(env["HOME"]) / ".docker" / "config.json")
    return next((c for c in candidates if c.is_file()), None)
