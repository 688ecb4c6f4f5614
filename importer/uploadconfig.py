"""The upload server's and the cloner's environment (docs/pod-contract.md 4.7 and 4.9), validated.

As for the importer pod, the fixed paths (/data, /dev/cdi-block-volume, /scratch,
/dev/termination-log) hang off IMPORTER_FS_ROOT so tests can move them; the contract itself is
unchanged.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .errors import ConfigError
from .goflags import parse_go_bool
from .quantity import is_decimal, parse_quantity

__all__ = ["ClonerSettings", "UploadSettings", "read_cloner_environment",
           "read_upload_environment"]

TLS_VERSIONS = {"VersionTLS10": ssl.TLSVersion.TLSv1, "VersionTLS11": ssl.TLSVersion.TLSv1_1,
                "VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class UploadSettings:
    tls_cert: Path
    tls_key: Path
    client_ca: Path | None
    client_name: str
    overhead: Decimal
    image_size: int | None
    preallocation: bool
    ciphers: list[str]
    min_version: ssl.TLSVersion | None
    deadline: datetime | None
    destination: Path
    block: bool
    data_dir: Path
    scratch_dir: Path | None
    listen: tuple[str, int]
    termination_log: Path


@dataclass(frozen=True, slots=True)
class ClonerSettings:
    client_cert: str  # PEM text (CDI passes the secret's values, not paths)
    client_key: str
    server_ca: str
    upload_url: str
    owner_uid: str
    preallocation: bool
    termination_log: Path
    metrics_port: int
    #: cloner_startup.sh's inputs: what to clone when no flags say it
    volume_mode: str = "filesystem"
    mount_point: str = ""


def _bool(name: str, value: str, problems: list[str]) -> bool:
    parsed = parse_go_bool(value or "false")  # unset is false
    if parsed is None:
        problems.append(f"{name}={value!r}: use true or false")
    return bool(parsed)


def _sizes(env: Mapping[str, str], problems: list[str]) -> tuple[Decimal, int | None]:
    """FILESYSTEM_OVERHEAD and UPLOAD_IMAGE_SIZE."""
    overhead = Decimal(0)
    try:
        overhead = Decimal(env.get("FILESYSTEM_OVERHEAD") or "0")
        if not 0 <= overhead < 1:
            raise InvalidOperation
    except InvalidOperation:
        problems.append(f"FILESYSTEM_OVERHEAD={env.get('FILESYSTEM_OVERHEAD')!r}: use a decimal "
                        "fraction from 0 to below 1")
        overhead = Decimal(0)
    image_size = None
    if env.get("UPLOAD_IMAGE_SIZE"):
        try:
            image_size = parse_quantity(env["UPLOAD_IMAGE_SIZE"])
        except ValueError as exc:
            problems.append(f"UPLOAD_IMAGE_SIZE: {exc}")
    return overhead, image_size


def _deadline(env: Mapping[str, str], problems: list[str]) -> datetime | None:
    """DEADLINE: an RFC 3339 time with its zone (CDI's upload deadline), or None."""
    if not env.get("DEADLINE"):
        return None
    try:
        deadline = datetime.fromisoformat(env["DEADLINE"].replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"DEADLINE={env['DEADLINE']!r}: not an RFC 3339 time")
        return None
    if deadline.tzinfo is None:
        problems.append(f"DEADLINE={env['DEADLINE']!r}: give a time zone (RFC 3339)")
    return deadline


def read_upload_environment(env: Mapping[str, str]) -> UploadSettings:
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    problems: list[str] = []

    def path(name: str) -> Path | None:
        value = env.get(name)
        return root / value.lstrip("/") if value else None

    cert, key = path("TLS_CERT_FILE"), path("TLS_KEY_FILE")
    if cert is None or key is None or not cert.is_file() or not key.is_file():
        problems.append("invalid TLS config: TLS_CERT_FILE and TLS_KEY_FILE must name the "
                        "server's certificate and key")
    client_ca = path("CLIENT_CERT_FILE")
    if client_ca is not None and not client_ca.is_file():
        problems.append(f"CLIENT_CERT_FILE={env['CLIENT_CERT_FILE']}: no such file")
    overhead, image_size = _sizes(env, problems)
    preallocation = _bool("PREALLOCATION", env.get("PREALLOCATION", ""), problems)
    min_version = None
    if env.get("TLS_MIN_VERSION"):
        min_version = TLS_VERSIONS.get(env["TLS_MIN_VERSION"])
        if min_version is None:
            problems.append(f"TLS_MIN_VERSION={env['TLS_MIN_VERSION']!r}: use one of "
                            f"{', '.join(TLS_VERSIONS)}")
    ciphers = [c.strip() for c in env.get("TLS_CIPHERS", "").split(",") if c.strip()]
    deadline = _deadline(env, problems)
    block_dev = root / "dev" / "cdi-block-volume"
    destination = path("DESTINATION") or root / "data" / "disk.img"
    try:
        block = stat.S_ISBLK(os.stat(destination).st_mode)
    except FileNotFoundError:
        block = False
    data_dir = root / "data"
    if not block and not destination.parent.is_dir():
        problems.append(f"DESTINATION={destination}: neither a block device nor in an existing "
                        f"directory (mount the volume at {data_dir} or {block_dev})")
    port = env.get("LISTEN_PORT") or "8443"
    if not is_decimal(port) or not 0 <= int(port) < 65536:
        problems.append(f"LISTEN_PORT={port!r}: use a port number")
        port = "8443"
    if problems:
        # CDI: an invalid DEADLINE is fatal (klog.Fatal: exit 255); every other problem exit 1
        code = 255 if any(p.startswith("DEADLINE") for p in problems) else 1
        raise ConfigError("; ".join(problems), exit_code=code)
    assert cert is not None and key is not None
    scratch = root / "scratch"
    return UploadSettings(
        tls_cert=cert, tls_key=key, client_ca=client_ca,
        client_name=env.get("CLIENT_NAME", ""), overhead=overhead, image_size=image_size,
        preallocation=preallocation, ciphers=ciphers, min_version=min_version,
        deadline=deadline, destination=destination, block=block, data_dir=data_dir,
        scratch_dir=scratch if scratch.is_dir() else None,
        listen=(env.get("LISTEN_ADDRESS") or "0.0.0.0", int(port)),
        termination_log=root / "dev" / "termination-log")


def read_cloner_environment(env: Mapping[str, str]) -> ClonerSettings:
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    problems = [f"{name} is empty" for name in ("CLIENT_CERT", "CLIENT_KEY", "SERVER_CA_CERT",
                                                   "UPLOAD_URL") if not env.get(name)]
    preallocation = _bool("PREALLOCATION", env.get("PREALLOCATION", ""), problems)
    port = env.get("CLONER_METRICS_PORT") or "8443"  # ours, for tests; CDI's is 8443
    if not is_decimal(port):
        problems.append(f"CLONER_METRICS_PORT={port!r}: use a port number")
        port = "8443"
    if problems:
        raise ConfigError("; ".join(problems), exit_code=255)
    return ClonerSettings(
        client_cert=env["CLIENT_CERT"], client_key=env["CLIENT_KEY"],
        server_ca=env["SERVER_CA_CERT"], upload_url=env["UPLOAD_URL"],
        owner_uid=env.get("OWNER_UID", ""), preallocation=preallocation,
        termination_log=root / "dev" / "termination-log", metrics_port=int(port),
        volume_mode=env.get("VOLUME_MODE") or "filesystem",
        mount_point=env.get("MOUNT_POINT", ""))
