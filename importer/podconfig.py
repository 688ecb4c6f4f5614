"""The CDI importer pod's environment and fixed paths, validated into an ImportConfig plus the
pod-only settings (docs/pod-contract.md sections 1.2-1.4, 3.3, 5.1).

Every invalid value is reported at once, naming the variable and what it accepts. The fixed
paths (/data, /dev/cdi-block-volume, /scratch, /certs, /extraheaders, /proxycerts,
/dev/termination-log) hang off a filesystem root that tests move with IMPORTER_FS_ROOT; the
contract itself is unchanged.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .config import (
    ContentType,
    Front,
    Header,
    ImportConfig,
    Problem,
    parse_header,
    parse_image_size,
    validate_config,
)
from .errors import ConfigError
from .goflags import parse_go_bool
from .quantity import is_decimal
from .sources.kinds import SourceKind, pod_kind, registered

__all__ = [
    "EarlySettings",
    "PodSettings",
    "available_space",
    "device_size",
    "early_settings",
    "get_required_space",
    "get_usable_space",
    "read_pod_environment",
]

MiB = 1 << 20
#: IMPORTER_SOURCE values: every pod kind of sources/kinds.py, and `none` (a blank disk)
def pod_sources() -> tuple[str, ...]:
    """IMPORTER_SOURCE's values: every kind's pod name (registered ones too), and none."""
    return (*(k.pod_name for k in registered() if k.pod_name), "none")
#: sources whose transports later issues add; until then they fail with a clear message
def not_yet() -> set[str]:
    """Kinds announced but not built in this version."""
    return {k.pod_name for k in registered() if k.pod_name and k.opener is None}


def get_usable_space(overhead: Decimal, available: int) -> int:
    """CDI's GetUsableSpace: RoundDown_1MiB(ceil(available / (1 + overhead)))."""
    usable = math.ceil(Decimal(available) / (1 + overhead))
    return usable - usable % MiB


def get_required_space(overhead: Decimal, requested: int) -> int:
    """CDI's GetRequiredSpace: ceil(RoundUp_1MiB(requested) * (1 + overhead))."""
    rounded = -(-requested // MiB) * MiB
    return math.ceil(rounded * (1 + overhead))


def device_size(path: Path) -> int:
    """A block device's (or a file's) size, as `blockdev --getsize64` says it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def available_space(path: Path, block: bool, image_size: int | None) -> int:
    """Contract 3.3: a block device's size, or min(free space of /data, IMAGE_SIZE)."""
    if block:
        return device_size(path)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    return free if image_size is None else min(free, image_size)


@dataclass(frozen=True, slots=True)
class PodSettings:
    source: str
    owner_uid: str
    content_type: ContentType
    block: bool  # volume mode, decided by the presence of /dev/cdi-block-volume
    dest: Path
    data_dir: Path
    image_size: int | None  # IMPORTER_IMAGE_SIZE in bytes
    overhead: Decimal
    preallocation: bool
    metrics_port: int
    verbosity: int
    #: registry node pull (contract 4.4.5): the sidecar's ready file as CDI names it (for
    #: messages), and where the ready and done files are on this filesystem
    node_pull: bool = False
    ready_file: str = ""
    ready_path: Path = Path("/shared/ready")
    done_path: Path = Path("/shared/done")
    #: seconds to wait for the ready file (CDI: 60); IMPORTER_READY_TIMEOUT is our extension
    ready_timeout: float = 60.0
    #: a warm import's delta stage: it applies onto the disk a previous stage wrote
    delta_stage: bool = False
    #: the "available space" of contract 3.3, measured by the pod's pre-flight (pod.py)
    available: int = 0


@dataclass(frozen=True, slots=True)
class EarlySettings:
    """What the pod needs before the full validation: the metrics endpoint starts first
    (contract 1.5) and the termination log must be writable even when validation fails."""

    owner_uid: str
    metrics_port: int
    termination_log: Path


def early_settings(env: Mapping[str, str]) -> EarlySettings:
    port = env.get("IMPORTER_METRICS_PORT", "8443")
    return EarlySettings(
        owner_uid=env.get("OWNER_UID", ""),
        metrics_port=int(port) if is_decimal(port) else 8443,  # validated again, with a message
        termination_log=Path(env.get("IMPORTER_FS_ROOT", "/")) / "dev" / "termination-log")


def _parse_bool(name: str, value: str, problems: list[Problem]) -> bool:
    parsed = parse_go_bool(value)  # Go's strconv.ParseBool, which CDI uses
    if parsed is None:
        problems.append(Problem(name, f"{name}={value!r}: use true or false"))
    return bool(parsed)


#: the pod's names for the settings it shares with the CLI (messages name what the user set)
POD = Front({
    "source": "IMPORTER_ENDPOINT", "source_kind": "IMPORTER_SOURCE",
    "content_type": "IMPORTER_CONTENTTYPE", "image_size": "IMPORTER_IMAGE_SIZE",
    "checksum": "IMPORTER_CHECKSUM", "converter": "IMPORTER_CONVERTER",
    "username": "IMPORTER_ACCESS_KEY_ID", "headers": "IMPORTER_EXTRA_HEADER_*",
    "ca_dir": "IMPORTER_CERT_DIR", "registry_arch": "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE",
    "disk_id": "IMPORTER_DISK_ID", "checkpoint": "IMPORTER_CURRENT_CHECKPOINT",
    "previous_checkpoint": "IMPORTER_PREVIOUS_CHECKPOINT", "vm_uuid": "IMPORTER_UUID",
    "backing_file": "IMPORTER_BACKING_FILE", "thumbprint": "IMPORTER_THUMBPRINT",
    "vddk_config": "/vddk-args/vddk-config-file",
}, url_credentials=True, password_variable=None, check_dest=False, any_kind=True,
    separator="=")


def read_pod_environment(env: Mapping[str, str], verbosity: int = 1
                         ) -> tuple[PodSettings, ImportConfig | None]:
    """The pod settings and, unless the source is `none` (blank image), the import config.

    The settings the pod shares with the CLI are validated by config.validate_config, named as
    the pod's variables; only what the pod alone has (volumes, node pull, the metrics port,
    Go's booleans) is checked here."""
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    problems: list[Problem] = []

    def problem(field: str, text: str) -> None:
        problems.append(Problem(field, text))

    source = env.get("IMPORTER_SOURCE", "")
    if source not in pod_sources():
        problem("source_kind", f"Unknown data source: {source} (IMPORTER_SOURCE: use one of "
                f"{', '.join(pod_sources())})")
    image_size, size_problem = parse_image_size(env.get("IMPORTER_IMAGE_SIZE"),
                                                "IMPORTER_IMAGE_SIZE")
    overhead = Decimal(0)
    if env.get("FILESYSTEM_OVERHEAD"):
        try:
            overhead = Decimal(env["FILESYSTEM_OVERHEAD"])
            if not 0 <= overhead < 1:
                raise InvalidOperation
        except InvalidOperation:
            problem("overhead", f"FILESYSTEM_OVERHEAD={env['FILESYSTEM_OVERHEAD']!r}: use a "
                    "decimal fraction from 0 to below 1, e.g. 0.055")
            overhead = Decimal(0)
    preallocation = _parse_bool("PREALLOCATION", env.get("PREALLOCATION", "false"), problems)
    insecure = _parse_bool("INSECURE_TLS", env.get("INSECURE_TLS") or "false", problems)
    cache_mode = env.get("CACHE_MODE", "")
    if cache_mode not in ("", "TRYNONE"):
        problem("cache_mode", f"CACHE_MODE={cache_mode!r}: use TRYNONE or leave it empty")
    try:
        metrics_port = int(env.get("IMPORTER_METRICS_PORT", "8443"))
    except ValueError:
        problem("metrics_port", "IMPORTER_METRICS_PORT: use a port number")
        metrics_port = 8443
    ctype_value = env.get("IMPORTER_CONTENTTYPE") or "kubevirt"
    ctype = ContentType.ARCHIVE if ctype_value == "archive" else ContentType.KUBEVIRT

    block, dest, data_dir = _volume(root, ctype, source, problems)

    node_pull, ready_timeout = _node_pull(env, source, problems)

    config = None
    kind = pod_kind(source)
    if source != "none":  # an unknown source too: every invalid value is reported at once
        config, shared = _validate_shared(env, root, kind, dest, insecure, preallocation)
        problems += shared
    elif size_problem:  # a blank disk: the size is the one shared setting it has
        problems.append(size_problem)
    elif source == "none" and ctype_value not in ("kubevirt", "archive"):
        problem("content_type", f"IMPORTER_CONTENTTYPE={ctype_value!r}: use 'kubevirt' (a disk "
                "image) or 'archive'")
    if problems:
        raise _pod_config_error(problems, source)

    settings = PodSettings(
        source=source, owner_uid=env.get("OWNER_UID", ""), content_type=ctype, block=block,
        dest=dest, data_dir=data_dir,
        image_size=image_size, overhead=overhead, preallocation=preallocation,
        metrics_port=metrics_port, verbosity=verbosity,
        node_pull=node_pull, ready_file=env.get("IMPORTER_READY_FILE", ""),
        ready_path=root / env.get("IMPORTER_READY_FILE", "").lstrip("/"),
        done_path=root / env.get("IMPORTER_DONE_FILE", "").lstrip("/"),
        ready_timeout=ready_timeout, delta_stage=bool(env.get("IMPORTER_PREVIOUS_CHECKPOINT")))
    return settings, config


def _volume(root: Path, ctype: ContentType, source: str, problems: list[Problem]
            ) -> tuple[bool, Path, Path]:
    """Block or filesystem volume (CDI's fixed paths): (block, the destination, /data)."""
    block_dev = root / "dev" / "cdi-block-volume"
    data_dir = root / "data"
    try:
        block = stat.S_ISBLK(os.stat(block_dev).st_mode)
    except FileNotFoundError:
        block = False
    if block and ctype is ContentType.ARCHIVE and source != "none":
        problems.append(Problem("content_type", "IMPORTER_CONTENTTYPE=archive needs a "
                                "filesystem volume: the target is a block volume "
                                "(/dev/cdi-block-volume), which holds one disk image, not the "
                                "files of an archive; use volumeMode Filesystem or contentType "
                                "kubevirt"))
    if block:
        dest = block_dev
    elif ctype is ContentType.ARCHIVE:
        dest = data_dir
    else:
        dest = data_dir / "disk.img"
    if not block and not data_dir.is_dir():
        problems.append(Problem("dest", f"neither {block_dev} (block volume) nor the directory "
                                f"{data_dir} (filesystem volume) exists: mount the target volume"))
    return block, dest, data_dir


def _node_pull(env: Mapping[str, str], source: str, problems: list[Problem]
               ) -> tuple[bool, float]:
    """CDI: "node" pulls through the image server sidecar; anything else ("pod", the
    controller's other value, or unset) is a pull by the pod itself."""
    node_pull = env.get("IMPORTER_PULL_METHOD", "") == "node"
    if node_pull and source != "http":
        problems.append(Problem("node_pull", "IMPORTER_PULL_METHOD=node goes with "
                                f"IMPORTER_SOURCE=http, not {source!r}"))
    if node_pull and not (env.get("IMPORTER_READY_FILE") and env.get("IMPORTER_DONE_FILE")):
        problems.append(Problem("node_pull", "IMPORTER_PULL_METHOD=node needs "
                                "IMPORTER_READY_FILE and IMPORTER_DONE_FILE"))
    ready_timeout = 60.0
    if env.get("IMPORTER_READY_TIMEOUT"):
        try:
            ready_timeout = float(env["IMPORTER_READY_TIMEOUT"])
        except ValueError:
            problems.append(Problem("node_pull", "IMPORTER_READY_TIMEOUT: use a number of "
                                    "seconds"))
    return node_pull, ready_timeout


def _validate_shared(env: Mapping[str, str], root: Path, kind: SourceKind | None, dest: Path,
                     insecure: bool, preallocation: bool
                     ) -> tuple[ImportConfig | None, list[Problem]]:
    """The settings the pod shares with the CLI, through the one validator."""
    headers: list[Header] = []
    problems: list[Problem] = []
    for name in sorted(k for k in env if k.startswith("IMPORTER_EXTRA_HEADER_")):
        try:
            headers.append(parse_header(env[name], where=name, secret=True))
        except ConfigError as exc:
            problems.append(Problem("headers", str(exc)))
    extra_dir = root / "extraheaders"
    username = env.get("IMPORTER_ACCESS_KEY_ID") or None
    password = env.get("IMPORTER_SECRET_KEY") or None
    if kind is not None and kind.name == "registry" and not (username and password):
        username = password = None  # CDI: registry credentials count only as a pair
    cert_dir = env.get("IMPORTER_CERT_DIR")
    proxy_certs = root / "proxycerts"  # CDI reads this fixed path, not IMPORTER_PROXY_CERT_DIR
    scratch = root / "scratch"
    config, shared = validate_config(
        source=env.get("IMPORTER_ENDPOINT", ""), dest=dest,
        source_kind=kind.name if kind else "auto",
        content_type=env.get("IMPORTER_CONTENTTYPE") or "kubevirt",
        image_size=env.get("IMPORTER_IMAGE_SIZE"), preallocation=preallocation,
        checksum=env.get("IMPORTER_CHECKSUM"),
        scratch_dir=scratch if scratch.is_dir() else None, scratch_required=True,
        username=username, password=password, parsed_headers=headers,
        header_files=[extra_dir] if extra_dir.is_dir() else [],
        ca_dir=root / cert_dir.lstrip("/") if cert_dir else None,
        extra_ca_dirs=[proxy_certs] if proxy_certs.is_dir() else [], insecure=insecure,
        options=kind.pod_options(env, root) if kind and kind.pod_options else None,
        converter=env.get("IMPORTER_CONVERTER") or "auto",  # ours: not set by CDI's controller
        tar_as_raw=True,
        environ={k: v for k, v in env.items()
                 if k.lower() in ("http_proxy", "https_proxy", "no_proxy")},
        front=POD)
    return config, problems + shared


def _pod_config_error(problems: list[Problem], source: str) -> ConfigError:
    """CDI exits 1 on configuration errors; only an unparsable image size panics (exit 2).
    Where CDI has an exact message for a lone problem, the controller and users see it."""
    termination = None
    if len(problems) == 1 and source not in pod_sources():
        termination = f"Unknown data source: {source}"
    elif len(problems) == 1 and problems[0].field == "checksum":
        termination = f"Unable to connect to {source} data source: {problems[0].detail}"
    unparsable = any(p.field == "image_size" and "larger" not in p.text for p in problems)
    return ConfigError("; ".join(p.text for p in problems), exit_code=2 if unparsable else 1,
                       termination=termination)
