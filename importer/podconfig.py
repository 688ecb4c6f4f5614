"""The CDI importer pod's environment and fixed paths, validated into an ImportConfig plus the
pod-only settings (cdi-contract.md sections 1.2-1.4, 3.3, 5.1).

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
from urllib.parse import unquote, urlsplit, urlunsplit

from .checksum import parse_checksum
from .config import (
    CONVERTERS,
    ContentType,
    Header,
    HttpOptions,
    ImportConfig,
    parse_header,
    read_header_files,
)
from .errors import ConfigError
from .quantity import parse_quantity
from .sources.kinds import KINDS, pod_kind

__all__ = [
    "EarlySettings",
    "PodSettings",
    "early_settings",
    "get_required_space",
    "get_usable_space",
    "read_pod_environment",
]

MiB = 1 << 20
#: IMPORTER_SOURCE values: every pod kind of sources/kinds.py, and `none` (a blank disk)
SOURCES = (*(k.pod_name for k in KINDS if k.pod_name), "none")
#: sources whose transports later issues add; until then they fail with a clear message
NOT_YET = {k.pod_name for k in KINDS if k.pod_name and k.opener is None}


def get_usable_space(overhead: Decimal, available: int) -> int:
    """CDI's GetUsableSpace: RoundDown_1MiB(ceil(available / (1 + overhead)))."""
    usable = math.ceil(Decimal(available) / (1 + overhead))
    return usable - usable % MiB


def get_required_space(overhead: Decimal, requested: int) -> int:
    """CDI's GetRequiredSpace: ceil(RoundUp_1MiB(requested) * (1 + overhead))."""
    rounded = -(-requested // MiB) * MiB
    return math.ceil(rounded * (1 + overhead))


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
        metrics_port=int(port) if port.isdigit() else 8443,  # validated again, with a message
        termination_log=Path(env.get("IMPORTER_FS_ROOT", "/")) / "dev" / "termination-log")


def _parse_bool(name: str, value: str, problems: list[str]) -> bool:
    # Go's strconv.ParseBool, which CDI uses
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    problems.append(f"{name}={value!r}: use true or false")
    return False


def read_pod_environment(env: Mapping[str, str], verbosity: int = 1
                         ) -> tuple[PodSettings, ImportConfig | None]:
    """The pod settings and, unless the source is `none` (blank image), the import config."""
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    problems: list[str] = []

    source = env.get("IMPORTER_SOURCE", "")
    if source not in SOURCES:
        problems.append(f"Unknown data source: {source} (IMPORTER_SOURCE: use one of "
                        f"{', '.join(SOURCES)})")
    endpoint = env.get("IMPORTER_ENDPOINT", "")
    if source not in ("none", "") and not endpoint:
        problems.append("IMPORTER_ENDPOINT is empty: it must name the image to import")
    try:
        ctype = ContentType(env.get("IMPORTER_CONTENTTYPE") or "kubevirt")
    except ValueError:
        problems.append(f"IMPORTER_CONTENTTYPE={env.get('IMPORTER_CONTENTTYPE')!r}: use kubevirt or archive")
        ctype = ContentType.KUBEVIRT
    if source in ("registry", "imageio") and ctype is not ContentType.KUBEVIRT:
        problems.append(f"IMPORTER_CONTENTTYPE=archive is not possible with IMPORTER_SOURCE={source}")

    image_size: int | None = None
    size_unparsable = False
    if env.get("IMPORTER_IMAGE_SIZE"):
        try:
            image_size = parse_quantity(env["IMPORTER_IMAGE_SIZE"])
        except ValueError as exc:
            problems.append(f"IMPORTER_IMAGE_SIZE: {exc}")
            size_unparsable = True
    overhead = Decimal(0)
    if env.get("FILESYSTEM_OVERHEAD"):
        try:
            overhead = Decimal(env["FILESYSTEM_OVERHEAD"])
            if not 0 <= overhead < 1:
                raise InvalidOperation
        except InvalidOperation:
            problems.append(f"FILESYSTEM_OVERHEAD={env['FILESYSTEM_OVERHEAD']!r}: use a decimal "
                            "fraction from 0 to below 1, e.g. 0.055")
            overhead = Decimal(0)
    converter = env.get("IMPORTER_CONVERTER") or "auto"  # ours: not set by CDI's controller
    if converter not in CONVERTERS:
        problems.append(f"IMPORTER_CONVERTER={converter!r}: use {' or '.join(CONVERTERS)}")
    preallocation = _parse_bool("PREALLOCATION", env.get("PREALLOCATION", "false"), problems)
    insecure = _parse_bool("INSECURE_TLS", env.get("INSECURE_TLS") or "false", problems)
    cache_mode = env.get("CACHE_MODE", "")
    if cache_mode not in ("", "TRYNONE"):
        problems.append(f"CACHE_MODE={cache_mode!r}: use TRYNONE or leave it empty")
    checksum = None
    checksum_problem = None
    if env.get("IMPORTER_CHECKSUM"):
        try:
            checksum = parse_checksum(env["IMPORTER_CHECKSUM"])
        except ValueError as exc:
            checksum_problem = f"invalid checksum: {exc}"
            problems.append(f"IMPORTER_CHECKSUM: {checksum_problem}")
    try:
        metrics_port = int(env.get("IMPORTER_METRICS_PORT", "8443"))
    except ValueError:
        problems.append("IMPORTER_METRICS_PORT: use a port number")
        metrics_port = 8443

    headers: list[Header] = []
    for name in sorted(k for k in env if k.startswith("IMPORTER_EXTRA_HEADER_")):
        try:
            headers.append(parse_header(env[name], where=name, secret=True))
        except ConfigError as exc:
            problems.append(str(exc))
    extra_dir = root / "extraheaders"
    if extra_dir.is_dir():
        try:
            headers += read_header_files(extra_dir)
        except ConfigError as exc:
            problems.append(str(exc))

    block_dev = root / "dev" / "cdi-block-volume"
    data_dir = root / "data"
    try:
        block = stat.S_ISBLK(os.stat(block_dev).st_mode)
    except FileNotFoundError:
        block = False
    if block:
        dest = block_dev
    elif ctype is ContentType.ARCHIVE:
        dest = data_dir
    else:
        dest = data_dir / "disk.img"
    if not block and not data_dir.is_dir():
        problems.append(f"neither {block_dev} (block volume) nor the directory {data_dir} "
                        "(filesystem volume) exists: mount the target volume")

    pull_method = env.get("IMPORTER_PULL_METHOD", "")
    if pull_method not in ("", "node"):
        problems.append(f"IMPORTER_PULL_METHOD={pull_method!r}: use node or leave it empty")
    node_pull = pull_method == "node"
    if node_pull and source != "http":
        problems.append(f"IMPORTER_PULL_METHOD=node goes with IMPORTER_SOURCE=http, not {source!r}")
    if node_pull and not (env.get("IMPORTER_READY_FILE") and env.get("IMPORTER_DONE_FILE")):
        problems.append("IMPORTER_PULL_METHOD=node needs IMPORTER_READY_FILE and IMPORTER_DONE_FILE")
    ready_timeout = 60.0
    if env.get("IMPORTER_READY_TIMEOUT"):
        try:
            ready_timeout = float(env["IMPORTER_READY_TIMEOUT"])
        except ValueError:
            problems.append("IMPORTER_READY_TIMEOUT: use a number of seconds")

    cert_dir = env.get("IMPORTER_CERT_DIR")
    ca_dir = None
    if cert_dir:
        ca_dir = root / cert_dir.lstrip("/")
        if not ca_dir.is_dir():
            problems.append(f"IMPORTER_CERT_DIR={cert_dir}: not a directory")
    if problems:
        # CDI exits 1 on configuration errors; only an unparsable image size panics (exit 2).
        # Where CDI has an exact message for a lone problem, the controller and users see it.
        termination = None
        if len(problems) == 1 and source not in SOURCES:
            termination = f"Unknown data source: {source}"
        elif len(problems) == 1 and checksum_problem:
            termination = f"Unable to connect to {source} data source: {checksum_problem}"
        raise ConfigError("; ".join(problems), exit_code=2 if size_unparsable else 1,
                          termination=termination)

    settings = PodSettings(
        source=source, owner_uid=env.get("OWNER_UID", ""), content_type=ctype, block=block,
        dest=dest, data_dir=data_dir,
        image_size=image_size, overhead=overhead, preallocation=preallocation,
        metrics_port=metrics_port, verbosity=verbosity,
        node_pull=node_pull, ready_file=env.get("IMPORTER_READY_FILE", ""),
        ready_path=root / env.get("IMPORTER_READY_FILE", "").lstrip("/"),
        done_path=root / env.get("IMPORTER_DONE_FILE", "").lstrip("/"),
        ready_timeout=ready_timeout, delta_stage=bool(env.get("IMPORTER_PREVIOUS_CHECKPOINT")))
    if source == "none":
        return settings, None

    proxies = {k[:-6].lower(): v for k, v in env.items()
               if k.lower() in ("http_proxy", "https_proxy", "no_proxy") and v}
    proxy_certs = root / "proxycerts"  # CDI reads this fixed path, not IMPORTER_PROXY_CERT_DIR
    username = env.get("IMPORTER_ACCESS_KEY_ID") or None
    password = env.get("IMPORTER_SECRET_KEY") or None
    endpoint, url_user, url_password = _split_userinfo(endpoint)
    if url_user is not None and username is None:
        # CDI's Go client sends URL userinfo as basic auth unless credentials were given;
        # so do we, but the URL we log and report no longer carries them
        username, password = url_user, url_password
    if source == "registry" and not (username and password):
        username = password = None  # CDI: registry credentials count only as a pair
    http = HttpOptions(
        username=username,
        password=password,
        headers=tuple(headers), ca_dir=ca_dir,
        extra_ca_dirs=(proxy_certs,) if proxy_certs.is_dir() else (),
        insecure=insecure, proxies=proxies)
    scratch = root / "scratch"
    kind = pod_kind(source)
    # the sizes (image_size, size_limit) are set by the pre-flight, once the space is measured
    config = ImportConfig(
        source=endpoint, dest=dest, content_type=ctype, preallocation=preallocation, checksum=checksum,
        scratch_dir=scratch if scratch.is_dir() else None, scratch_required=True, http=http,
        cache_mode=None, source_kind=kind.name if kind else "http",
        options=kind.pod_options(env, root) if kind and kind.pod_options else None,
        tar_as_raw=True, converter=converter)
    return settings, config


def _split_userinfo(endpoint: str) -> tuple[str, str | None, str | None]:
    """`http://user:pass@host/x` -> (`http://host/x`, user, pass), percent-decoded."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return endpoint, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return (urlunsplit(parts._replace(netloc=hostport)), unquote(user),
            unquote(password) if ":" in userinfo else None)
