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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .checksum import ChecksumSpec, checksum_for_file, parse_checksum
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
    Header,
    HttpOptions,
    RegistryOptions,
    SourceOptions,
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
}, dashed_flags=True)


def build_config(**values: Any) -> ImportConfig:
    """validate_config for a front-end with nothing of its own to add: the config, or one
    ConfigError listing every problem."""
    config, problems = validate_config(**values)
    if config is None:
        raise ConfigError("; ".join(p.text for p in problems))
    return config


#: the per-kind keyword arguments validate_config still takes (tests and the registry, whose
#: credentials file comes from the environment); the CLI gives the other kinds' options built
#: by the kinds themselves (sources/kinds.py)
KIND_FLAGS = ("s3_endpoint", "s3_region", "gcs_credentials", "registry_arch",
              "registry_auth_file", "disk_id", "checkpoint", "previous_checkpoint", "vm_uuid",
              "backing_file", "thumbprint", "vddk_libdir", "vddk_plugin", "vddk_config")


@dataclass(frozen=True, slots=True)
class RawSettings:
    """Every setting as a front-end gives it (strings, paths, numbers), before validation:
    what validate_config's keywords hold, passed to its sections as one value."""

    source: str
    dest: str | Path
    content_type: str = "kubevirt"
    image_size: str | None = None
    preallocation: bool = False
    checksum: str | None = None
    #: a SHA256SUMS-style file holding the source's checksum, found by its file name
    checksum_file: str | Path | None = None
    scratch_dir: str | Path | None = None
    scratch_required: bool = False
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    headers: Sequence[str] = ()
    header_files: Sequence[str | Path] = ()
    parsed_headers: Sequence[Header] = ()
    ca_dir: str | Path | None = None
    ca_file: str | None = None
    #: CA certificates given as PEM text (a populator's secret)
    ca_pems: Sequence[str] = ()
    extra_ca_dirs: Sequence[Path] = ()
    insecure: bool = False
    cache_mode: str | None = None
    connections: int = 4
    max_retries: int = 8
    retry_time: float = 30.0
    read_timeout: float = 120.0
    connect_timeout: float = 30.0
    low_speed_limit: int = 1024
    low_speed_time: float = 60.0
    source_kind: str = "auto"
    options: SourceOptions = None
    converter: str = "auto"
    input_format: str | None = None
    ova_disk: str | None = None
    tar_as_raw: bool = False
    environ: Mapping[str, str] | None = None
    front: Front = CLI
    #: the per-kind flags (KIND_FLAGS) the caller gave by keyword
    kind_flags: Mapping[str, str | None] = field(default_factory=dict)


def validate_config(**values: Any) -> tuple[ImportConfig | None, list[Problem]]:
    """The one validator of both front-ends: raw setting values (the fields of RawSettings, by
    keyword) into an ImportConfig, or None and every problem found (each named as `front`
    names it), section by section. `environ` defaults to the process environment (proxies,
    the password variable); `options` replaces the per-kind flags (KIND_FLAGS), which each
    kind otherwise builds and checks itself. An unknown name is a TypeError, as for a
    function's keywords."""
    kind_flags = {k: values.pop(k) for k in list(values) if k in KIND_FLAGS}
    return _validate(RawSettings(**values, kind_flags=kind_flags))


def _validate(r: RawSettings) -> tuple[ImportConfig | None, list[Problem]]:
    front = r.front
    env = os.environ if r.environ is None else r.environ
    src = _source_section(r.source, r.source_kind, r.kind_flags.get("registry_arch"), front)
    problems = list(src.problems)
    ctype = _content_type(r.content_type, src.kind, front, problems)
    size, size_problem = parse_image_size(r.image_size, front.name("image_size"))
    problems += [size_problem] if size_problem else []
    spec = _checksum(r.checksum, front, problems)
    if r.checksum_file:
        spec = _checksum_from_file(r.checksum_file, r.checksum, src.source, front, problems)
    problems += _scalar_problems(front, cache_mode=r.cache_mode, input_format=r.input_format,
                                 converter=r.converter, connections=r.connections,
                                 max_retries=r.max_retries, retry_time=r.retry_time,
                                 read_timeout=r.read_timeout, connect_timeout=r.connect_timeout,
                                 low_speed_limit=r.low_speed_limit,
                                 low_speed_time=r.low_speed_time)
    username, password = _credentials(src, r.username, r.password, r.password_file, env, front,
                                       problems)
    all_headers = _headers(r.parsed_headers, r.headers, r.header_files, front, problems)
    ca_path, extra_cas = _trust(r.ca_dir, r.ca_file, r.extra_ca_dirs, front, problems)
    scratch = Path(r.scratch_dir) if r.scratch_dir else None
    if scratch is not None and not scratch.is_dir():
        problems.append(Problem("scratch_dir", f"{front.name('scratch_dir')} {r.scratch_dir}: "
                                "not a directory"))
    problems += _dest_problems(r.dest, ctype, front)
    auth_file = _auth_file(r.kind_flags.get("registry_auth_file"), src.kind == "registry"
                           and r.options is None, env, front, problems)
    if problems:
        return None, problems
    http = HttpOptions(
        username=username, password=password, headers=tuple(all_headers), ca_dir=ca_path,
        extra_ca_dirs=tuple(extra_cas), ca_pems=tuple(r.ca_pems), insecure=r.insecure,
        proxies=_proxies(r.environ, env),
        max_retries=r.max_retries, retry_time=r.retry_time, read_timeout=r.read_timeout,
        connect_timeout=r.connect_timeout, low_speed_limit=r.low_speed_limit,
        low_speed_time=r.low_speed_time)
    options = r.options
    if options is None:
        options = _kind_options(src.kind, r.kind_flags, auth_file)
    problems += _kind_problems(src.source, r.source_kind, options, username, front)
    if problems:
        return None, problems
    return ImportConfig(
        source=src.source, dest=Path(r.dest), content_type=ctype, image_size=size,
        preallocation=r.preallocation, checksum=spec, scratch_dir=scratch,
        scratch_required=r.scratch_required, http=http, cache_mode=r.cache_mode,
        connections=r.connections,
        source_kind=src.kind if src.kind in ("registry", "s3", "gcs") else r.source_kind,
        options=options, tar_as_raw=r.tar_as_raw, converter=r.converter,
        input_format=r.input_format, ova_disk=r.ova_disk,
    ), []


@dataclass(frozen=True, slots=True)
class _Source:
    source: str  # without the credentials a pod's URL may carry
    kind: str  # the kind's name, or "auto" when it is unknown
    user: str | None
    password: str | None
    url_user: str | None  # a user named in the URL the CLI refuses
    problems: tuple[Problem, ...]


def _source_section(source: str, source_kind: str, registry_arch: str | None, front: Front
                    ) -> _Source:
    """SOURCE and --source: the URL parses, its scheme names a kind that is built, a registry
    reference is one; the pod's URL credentials taken out."""
    from .sources.kinds import all_names, kind_for, selectable_names, supported_schemes

    problems: list[Problem] = []
    url_user = url_password = None
    if front.url_credentials:
        source, url_user, url_password = split_userinfo(source)
    try:
        parts = urlsplit(source)
    except ValueError as exc:  # the source itself is not shown: it may hold a password
        raise ConfigError(f"{front.name('source')} is not a valid URL ({exc}); check its "
                          "brackets and characters (an IPv6 host is written "
                          "http://[::1]:8080/...)") from None
    kind_name = "auto"
    if not source:
        problems.append(Problem("source", f"{front.name('source')} is empty: it must name the "
                                "image to import"))
    kinds = all_names() if front.any_kind else selectable_names()
    if source_kind != "auto" and source_kind not in kinds:
        problems.append(Problem("source_kind", f"{front.setting('source_kind', source_kind)}: "
                                f"use {', '.join(kinds)}"))
    else:
        with contextlib.suppress(KeyError):  # an unknown scheme is reported below
            kind_name = kind_for(source, source_kind).name
    if kind_name == "registry" and source:
        from .sources.oci.reference import parse_reference

        try:
            parse_reference(source)
        except ConfigError as exc:
            problems.append(Problem("source", str(exc)))
    if registry_arch is not None and not re.fullmatch(r"[a-z0-9_]{1,32}", registry_arch):
        problems.append(Problem("registry_arch", f"{front.setting('registry_arch', registry_arch)}"
                                ": use an OCI architecture such as amd64, arm64, s390x or ppc64le"))
    if source and parts.scheme not in supported_schemes():
        from .sources.oci.reference import ARCHIVE_TRANSPORTS

        shown = ", ".join(f"{s}://" if s not in ("", *ARCHIVE_TRANSPORTS)
                          else (s + ":" if s else "a local path")
                          for s in supported_schemes())
        problems.append(Problem("source", f"{front.setting('source', source)}: unsupported "
                                f"scheme {parts.scheme!r}; use {shown}"))
    elif source and parts.scheme in ("http", "https") and not parts.hostname:
        problems.append(Problem("source", f"{front.setting('source', source)}: the URL has no "
                                "host"))
    return _Source(source, kind_name, url_user, url_password, parts.username,
                   tuple(problems))


def _content_type(content_type: str, kind: str, front: Front, problems: list[Problem]
                  ) -> ContentType:
    try:
        ctype = ContentType(content_type)
    except ValueError:
        problems.append(Problem("content_type", f"{front.setting('content_type', content_type)}"
                                ": use 'kubevirt' (a disk image) or 'archive'"))
        return ContentType.KUBEVIRT
    whole_disk = {"registry": "a container image", "imageio": "an oVirt disk",
                  "vddk": "a VMware disk"}
    if ctype is ContentType.ARCHIVE and kind in whole_disk:
        problems.append(Problem("content_type", f"{front.setting('content_type', 'archive')} is "
                                f"not possible with {whole_disk[kind]}: its disk is imported as "
                                "a disk image"))
    return ctype


def _checksum(checksum: str | None, front: Front, problems: list[Problem]
              ) -> ChecksumSpec | None:
    if not checksum:
        return None
    try:
        return parse_checksum(checksum)
    except ValueError as exc:
        problems.append(Problem("checksum", f"{front.name('checksum')}: {exc}",
                                f"invalid checksum: {exc}"))
        return None


def _checksum_from_file(path: str | Path, checksum: str | None, source: str, front: Front,
                        problems: list[Problem]) -> ChecksumSpec | None:
    """The line of a SHA256SUMS-style file for the source's file name (its URL path's last
    part), as distributions publish them beside their images."""
    where = front.name("checksum_file")
    if checksum:
        problems.append(Problem("checksum_file", f"{front.name('checksum')} and {where} both "
                                "give the checksum: give one"))
        return None
    name = unquote(urlsplit(source).path).rstrip("/").rpartition("/")[2] if source != "-" else ""
    if not name:
        problems.append(Problem("checksum_file", f"{where}: the source has no file name to look "
                                f"up; give {front.name('checksum')} ALGO:HEX instead"))
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        problems.append(Problem("checksum_file", f"{where} {path}: {exc.strerror or exc}"))
        return None
    try:
        spec = checksum_for_file(text, name)
    except ValueError as exc:
        problems.append(Problem("checksum_file", f"{where} {path}: {exc}"))
        return None
    if spec is None:
        problems.append(Problem("checksum_file", f"{where} {path} has no line for {name!r}; "
                                "check that it lists this file"))
    return spec


def _scalar_problems(front: Front, *, cache_mode: str | None, input_format: str | None,
                     converter: str, connections: int, max_retries: int, retry_time: float,
                     read_timeout: float, connect_timeout: float, low_speed_limit: int,
                     low_speed_time: float) -> list[Problem]:
    name, setting = front.name, front.setting
    checks = [
        ("cache_mode", cache_mode not in (None, "none", "writeback", "writethrough",
                                          "directsync", "unsafe"),
         f"{setting('cache_mode', cache_mode)}: use none, writeback, writethrough or "
         "directsync"),
        ("input_format", input_format is not None and input_format not in INPUT_FORMATS,
         f"{setting('input_format', input_format)}: use {', '.join(INPUT_FORMATS)}"),
        ("converter", converter not in CONVERTERS,
         f"{setting('converter', converter)}: use {' or '.join(CONVERTERS)}"),
        ("connections", not 1 <= connections <= 32,
         f"{name('connections')} {connections}: use a number from 1 to 32"),
        ("max_retries", max_retries < 0, f"{name('max_retries')} {max_retries}: use 0 or more"),
        ("retry_time", not 0 <= retry_time < float("inf"),
         f"{name('retry_time')} {retry_time}: use 0 or more seconds"),
        ("read_timeout", read_timeout <= 0,
         f"{name('read_timeout')} {read_timeout}: use a positive number of seconds"),
        ("connect_timeout", connect_timeout <= 0,
         f"{name('connect_timeout')} {connect_timeout}: use a positive number of seconds"),
        ("low_speed", low_speed_limit < 0 or low_speed_time <= 0,
         f"--low-speed-limit {low_speed_limit} / --low-speed-time {low_speed_time}: use 0 or "
         "more bytes and a positive number of seconds"),
    ]
    return [Problem(field, text) for field, bad, text in checks if bad]


def _credentials(src: _Source, username: str | None, password: str | None,
                 password_file: str | None, env: Mapping[str, str], front: Front,
                 problems: list[Problem]) -> tuple[str | None, str | None]:
    """The user and password: a file, the front's password variable, or the pod's URL."""
    name = front.name
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(Problem("password_file", f"{name('password_file')} {password_file}: "
                                    f"{exc.strerror}"))
    if password is None and front.password_variable and env.get(front.password_variable):
        password = env[front.password_variable]
    if src.user is not None and username is None:
        username, password = src.user, src.password
    if password is not None and not username:
        problems.append(Problem("username", f"a password was given without {name('username')}"))
    if src.url_user and not username:
        problems.append(Problem("source", "credentials in the URL are not accepted (they would "
                                "appear in logs and process lists): use --username and "
                                "--password-file or IMPORTER_PASSWORD"))
    return username, password


def _headers(parsed: Sequence[Header], headers: Sequence[str], files: Sequence[str | Path],
             front: Front, problems: list[Problem]) -> list[Header]:
    out: list[Header] = list(parsed)
    for h in headers:
        try:
            out.append(parse_header(h, where=front.name("headers"), secret=False))
        except ConfigError as exc:
            problems.append(Problem("headers", str(exc)))
    for hf in files:
        try:
            out += read_header_files(Path(hf))
        except ConfigError as exc:
            problems.append(Problem("headers", str(exc)))
    return out


def _trust(ca_dir: str | Path | None, ca_file: str | None, extra_ca_dirs: Sequence[Path],
           front: Front, problems: list[Problem]) -> tuple[Path | None, list[Path]]:
    ca_path = Path(ca_dir) if ca_dir else None
    if ca_path is not None and not ca_path.is_dir():
        problems.append(Problem("ca_dir", f"{front.setting('ca_dir', str(ca_dir))}: not a "
                                "directory (give the directory holding the CA files)"))
    extra = list(extra_ca_dirs)
    if ca_file:
        if Path(ca_file).is_file():
            extra.append(Path(ca_file))
        else:
            problems.append(Problem("ca_file", f"{front.setting('ca_file', ca_file)}: no such "
                                    "file"))
    return ca_path, extra


def _dest_problems(dest: str | Path, ctype: ContentType, front: Front) -> list[Problem]:
    path = Path(dest)
    if not front.check_dest or not dest:
        return []  # the pod checks its volumes; inspect has no destination
    if ctype is ContentType.ARCHIVE:
        if path.exists() and not path.is_dir():
            return [Problem("dest", f"destination {dest}: --content-type archive extracts into "
                            "a directory")]
        return []
    if path.is_dir():
        return [Problem("dest", f"destination {dest} is a directory; give a file path or a "
                        "block device")]
    if not path.exists() and not path.parent.is_dir():
        return [Problem("dest", f"destination {dest}: the directory {path.parent} does not "
                        "exist")]
    return []


def _auth_file(given: str | None, default_wanted: bool, env: Mapping[str, str], front: Front,
               problems: list[Problem]) -> Path | None:
    if given:
        if not Path(given).is_file():
            problems.append(Problem("registry_auth_file", f"{front.name('registry_auth_file')} "
                                    f"{given}: no such file"))
        return Path(given)
    return default_registry_auth_file(env) if default_wanted else None


def _proxies(environ: Mapping[str, str] | None, env: Mapping[str, str]) -> dict[str, str]:
    if environ is None:
        return proxies_from_environment(os.environ)
    # an explicit environment replaces the process one entirely
    return {k[:-6].lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}


def _kind_options(kind: str, flags: Mapping[str, str | None], auth_file: Path | None
                  ) -> SourceOptions:
    """A kind's options from the shared keyword arguments (KIND_FLAGS): built by the kind
    itself as from its CLI flags; the registry's here, with its credentials file."""
    from .sources.kinds import registered

    if kind == "registry":
        return RegistryOptions(flags.get("registry_arch"), auth_file, tuple(
            (k, os.environ[k]) for k in HELPER_ENV if os.environ.get(k)))
    spec = next((k.cli for k in registered() if k.name == kind), None)
    return spec.options(flags.get) if spec is not None and spec.options is not None else None


def _kind_problems(source: str, source_kind: str, options: SourceOptions,
                   username: str | None, front: Front) -> list[Problem]:
    from .sources.kinds import kind_for

    try:
        kind = kind_for(source, source_kind)
    except (KeyError, StopIteration):  # an unknown kind is reported with the source
        return []
    return kind.problems(options, username, front) if kind.problems is not None else []


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
