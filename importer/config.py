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
from urllib.parse import urlsplit

from .checksum import ChecksumSpec, parse_checksum
from .errors import ConfigError
from .quantity import parse_quantity
from .sources.options import GcsOptions, RegistryOptions, S3Options, SourceOptions

__all__ = [
    "ContentType",
    "Header",
    "HttpOptions",
    "ImportConfig",
    "build_config",
    "parse_header",
    "read_header_files",
]


#: "auto": the native reader where one exists (qcow2), qemu-img otherwise
CONVERTERS = ("auto", "qemu-img")
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
    #: more CA directories (the pod's /proxycerts), trusted like ca_dir
    extra_ca_dirs: tuple[Path, ...] = ()
    insecure: bool = False
    #: scheme -> proxy URL and "no" -> bypass list, captured from the environment at start
    proxies: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 30.0
    #: seconds without a single byte before a connection is abandoned and resumed
    read_timeout: float = 120.0
    max_retries: int = 8
    retry_backoff: float = 1.0
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


def build_config(
    *,
    source: str,
    dest: str,
    content_type: str = "kubevirt",
    image_size: str | None = None,
    preallocation: bool = False,
    checksum: str | None = None,
    scratch_dir: str | None = None,
    username: str | None = None,
    password: str | None = None,
    password_file: str | None = None,
    headers: Sequence[str] = (),
    header_files: Sequence[str] = (),
    ca_dir: str | None = None,
    insecure: bool = False,
    cache_mode: str | None = None,
    connections: int = 4,
    max_retries: int = 8,
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
    converter: str = "auto",
    environ: Mapping[str, str] | None = None,
) -> ImportConfig:
    """Validate raw option values into an ImportConfig, or raise one ConfigError listing all
    problems. `environ` defaults to the process environment (proxies, IMPORTER_PASSWORD)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    from .sources.kinds import kind_for, selectable_names, supported_schemes

    parts = urlsplit(source)
    kind_name = "auto"
    if source_kind != "auto" and source_kind not in selectable_names():
        problems.append(f"--source {source_kind!r}: use {', '.join(selectable_names())}")
    else:
        with contextlib.suppress(KeyError):  # an unknown scheme is reported below
            kind_name = kind_for(source, source_kind).name
    registry = kind_name == "registry"
    if registry:
        from .sources.oci.reference import parse_reference

        try:
            parse_reference(source)
        except ConfigError as exc:
            problems.append(str(exc))
    if registry_arch is not None and not re.fullmatch(r"[a-z0-9_]{1,32}", registry_arch):
        problems.append(f"--arch {registry_arch!r}: use an OCI architecture such as amd64, "
                        "arm64, s390x or ppc64le")
    if gcs_credentials and not Path(gcs_credentials).is_file():
        problems.append(f"--gcs-credentials {gcs_credentials}: no such file")
    if parts.scheme not in supported_schemes():
        shown = ", ".join(f"{s}://" if s not in ("", "oci-archive") else (s + ":" if s else "a local path")
                          for s in supported_schemes())
        problems.append(f"source {source!r}: unsupported scheme {parts.scheme!r}; use {shown}")
    elif parts.scheme in ("http", "https") and not parts.hostname:
        problems.append(f"source {source!r}: the URL has no host")

    try:
        ctype = ContentType(content_type)
    except ValueError:
        problems.append(f"--content-type {content_type!r}: use 'kubevirt' (a disk image) or 'archive'")
        ctype = ContentType.KUBEVIRT
    if registry and ctype is ContentType.ARCHIVE:
        problems.append("--content-type archive is not possible with a container image: its "
                        "disk is imported as a disk image")

    size: int | None = None
    if image_size:
        try:
            size = parse_quantity(image_size)
        except ValueError as exc:
            problems.append(f"--image-size: {exc}")
        if size is not None and size > MAX_FILE_SIZE:
            problems.append(f"--image-size {image_size}: larger than any file or device Linux "
                            f"can address ({MAX_FILE_SIZE} bytes)")
            size = None

    spec: ChecksumSpec | None = None
    if checksum:
        try:
            spec = parse_checksum(checksum)
        except ValueError as exc:
            problems.append(f"--checksum: {exc}")

    if cache_mode not in (None, "none", "writeback", "writethrough", "directsync", "unsafe"):
        problems.append(f"--cache-mode {cache_mode!r}: use none, writeback, writethrough or directsync")
    if converter not in CONVERTERS:
        problems.append(f"--converter {converter!r}: use {' or '.join(CONVERTERS)}")
    if not 1 <= connections <= 32:
        problems.append(f"--connections {connections}: use a number from 1 to 32")
    if max_retries < 0:
        problems.append(f"--retries {max_retries}: use 0 or more")
    if read_timeout <= 0:
        problems.append(f"--read-timeout {read_timeout}: use a positive number of seconds")
    if connect_timeout <= 0:
        problems.append(f"--connect-timeout {connect_timeout}: use a positive number of seconds")
    if low_speed_limit < 0 or low_speed_time <= 0:
        problems.append(f"--low-speed-limit {low_speed_limit} / --low-speed-time "
                        f"{low_speed_time}: use 0 or more bytes and a positive number of seconds")

    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(f"--password-file {password_file}: {exc.strerror}")
    if password is None and env.get("IMPORTER_PASSWORD"):
        password = env["IMPORTER_PASSWORD"]
    if password is not None and not username:
        problems.append("a password was given without --username")
    if parts.username and not username:
        problems.append(
            "credentials in the URL are not accepted (they would appear in logs and process "
            "lists): use --username and --password-file or IMPORTER_PASSWORD"
        )

    parsed_headers: list[Header] = []
    for h in headers:
        try:
            parsed_headers.append(parse_header(h, where="--header", secret=False))
        except ConfigError as exc:
            problems.append(str(exc))
    for hf in header_files:
        try:
            parsed_headers += read_header_files(Path(hf))
        except ConfigError as exc:
            problems.append(str(exc))

    ca_path: Path | None = None
    if ca_dir:
        ca_path = Path(ca_dir)
        if not ca_path.is_dir():
            problems.append(f"--ca-dir {ca_dir}: not a directory (give the directory holding the CA files)")

    scratch: Path | None = Path(scratch_dir) if scratch_dir else None
    if scratch is not None and not scratch.is_dir():
        problems.append(f"--scratch-dir {scratch_dir}: not a directory")

    dest_path = Path(dest)
    if not dest:
        pass  # inspect: no destination
    elif ctype is ContentType.ARCHIVE:
        if dest_path.exists() and not dest_path.is_dir():
            problems.append(f"destination {dest}: --content-type archive extracts into a directory")
    elif dest_path.is_dir():
        problems.append(f"destination {dest} is a directory; give a file path or a block device")
    elif not dest_path.exists() and not dest_path.parent.is_dir():
        problems.append(f"destination {dest}: the directory {dest_path.parent} does not exist")

    auth_file: Path | None = None
    if registry_auth_file:
        auth_file = Path(registry_auth_file)
        if not auth_file.is_file():
            problems.append(f"--registry-auth-file {registry_auth_file}: no such file")
    elif registry:
        auth_file = default_registry_auth_file(env)

    if problems:
        raise ConfigError("; ".join(problems))

    proxies = proxies_from_environment(os.environ)
    if environ is not None:  # an explicit environment replaces the process one entirely
        proxies = {
            k[:-6].lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v
        }
    http = HttpOptions(
        username=username,
        password=password,
        headers=tuple(parsed_headers),
        ca_dir=ca_path,
        insecure=insecure,
        proxies=proxies,
        max_retries=max_retries,
        read_timeout=read_timeout,
        connect_timeout=connect_timeout,
        low_speed_limit=low_speed_limit,
        low_speed_time=low_speed_time,
    )
    return ImportConfig(
        source=source,
        dest=dest_path,
        content_type=ctype,
        image_size=size,
        preallocation=preallocation,
        checksum=spec,
        scratch_dir=scratch,
        http=http,
        cache_mode=cache_mode,
        connections=connections,
        source_kind=kind_name if kind_name in ("registry", "s3", "gcs") else source_kind,
        options=_source_options(kind_name, s3_endpoint=s3_endpoint, s3_region=s3_region,
                                gcs_credentials=gcs_credentials, registry_arch=registry_arch,
                                registry_auth_file=auth_file),
        converter=converter,
    )


def _source_options(kind: str, *, s3_endpoint: str | None, s3_region: str | None,
                    gcs_credentials: str | None, registry_arch: str | None,
                    registry_auth_file: Path | None) -> SourceOptions:
    if kind == "s3":
        return S3Options(s3_endpoint, s3_region)
    if kind == "gcs":
        return GcsOptions(Path(gcs_credentials) if gcs_credentials else None)
    if kind == "registry":
        return RegistryOptions(registry_arch, registry_auth_file)
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
