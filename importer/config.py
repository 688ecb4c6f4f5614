"""The validation every front-end runs to build the settings the core consumes (their types
are in settings.py; the HTTP options and header parsing in sources/options.py, re-exported
here for the front-ends).

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
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .checksum import ChecksumSpec, parse_checksum
from .errors import ConfigError
from .quantity import parse_quantity
from .settings import (
    CONVERTERS,
    HELPER_ENV,
    INPUT_FORMATS,
    MAX_FILE_SIZE,
    ContentType,
    Front,
    ImportConfig,
    OutputSpec,
    Problem,
)
from .sources.options import (
    GcsOptions,
    Header,
    HttpOptions,
    ImageioOptions,
    RegistryOptions,
    S3Options,
    SourceOptions,
    VddkOptions,
    parse_header,
    proxies_from_environment,
    read_header_files,
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
    "proxies_from_environment",
    "read_header_files",
    "split_userinfo",
    "validate_config",
]




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
    with contextlib.suppress(KeyError, StopIteration):  # an unknown kind is reported above
        kind = kind_for(source, source_kind)
        if kind.problems is not None:
            problems += kind.problems(options, username, front)
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
