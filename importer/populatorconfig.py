"""The settings of ovirt-populator, from its flags and environment, as CDI's Forklift populator
controller gives them (pkg/controller/populators/forklift-populator.go):

    ovirt-populator --volume-path=/mnt/disk.img|/dev/block --secret-name=S --disk-id=ID
                    --engine-url=https://ENGINE --owner-uid=UID --pvc-size=BYTES

with the secret's keys as environment variables (`envFrom`): `user`, `password`, `cacert` (the
engine's CA, PEM) and `insecureSkipVerify` (Go's ParseBool). Progress goes to
`kubevirt_cdi_ovirt_progress_total{ownerUID}` on https://:8443/metrics, which the controller
scrapes (cmd/ovirt-populator, pkg/monitoring/metrics/ovirt-populator)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Front, ImportConfig, proxies_from_environment, validate_config
from .errors import ConfigError
from .goflags import parse_go_bool, parse_go_flags
from .quantity import is_decimal
from .sources.options import ImageioOptions

__all__ = ["OVIRT_USAGE", "OvirtPopulatorSettings", "ovirt_import_config",
           "read_ovirt_populator_settings"]

OVIRT_USAGE = ("usage: ovirt-populator --engine-url=https://ENGINE --disk-id=ID "
               "--volume-path=/mnt/disk.img|/dev/block --owner-uid=UID --pvc-size=BYTES "
               "[--secret-name=NAME]   (credentials from the secret's keys user, password, "
               "cacert, insecureSkipVerify)")

#: how messages name the populator's settings: its flags and the secret's keys
POPULATOR = Front({
    "source": "--engine-url", "disk_id": "--disk-id", "username": "the secret's user",
    "ca_file": "the secret's cacert",
}, password_variable=None, check_dest=False, any_kind=True, separator="=")


@dataclass(frozen=True, slots=True)
class OvirtPopulatorSettings:
    engine_url: str
    disk_id: str
    volume_path: Path
    owner_uid: str
    pvc_size: int
    username: str
    password: str = field(repr=False)
    cacert: str | None = field(repr=False)
    insecure: bool
    metrics_port: int
    termination_log: Path
    proxies: Mapping[str, str]


def read_ovirt_populator_settings(argv: Sequence[str], env: Mapping[str, str]
                                  ) -> OvirtPopulatorSettings:
    flags = parse_go_flags(argv, ("engine-url", "disk-id", "volume-path", "secret-name",
                                  "cr-name", "cr-namespace", "owner-uid", "pvc-size", "v"),
                           ("alsologtostderr",))
    if flags is None:
        raise ConfigError(f"unknown or incomplete arguments {list(argv)}; {OVIRT_USAGE}")
    size = flags.get("pvc-size", "0")
    if not is_decimal(size) or int(size) <= 0:
        raise ConfigError("pvc-size must be greater than 0")  # CDI's words
    missing = [f"--{n}" for n in ("engine-url", "disk-id", "volume-path") if not flags.get(n)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; {OVIRT_USAGE}")
    insecure = env.get("insecureSkipVerify", "false") or "false"
    if parse_go_bool(insecure) is None:
        raise ConfigError(f"Invalid boolean value for insecureSkipVerify: {insecure}")
    username = env.get("user", "")
    password = env.get("password", "")
    if not username or not password:
        raise ConfigError("the secret gives no user or no password (keys user and password): "
                          "the engine needs both")
    port = env.get("IMPORTER_METRICS_PORT", "8443")  # ours, for tests; CDI listens on 8443
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    return OvirtPopulatorSettings(
        engine_url=flags["engine-url"], disk_id=flags["disk-id"],
        volume_path=Path(flags["volume-path"]), owner_uid=flags.get("owner-uid", ""),
        pvc_size=int(size), username=username, password=password,
        cacert=env.get("cacert") or None, insecure=bool(parse_go_bool(insecure)),
        metrics_port=int(port) if is_decimal(port) else 8443,
        termination_log=root / "dev" / "termination-log",
        proxies=proxies_from_environment(env))


def ovirt_import_config(s: OvirtPopulatorSettings, ca_file: Path | None) -> ImportConfig:
    """The import of the disk into the volume, through the one validator; `ca_file` holds the
    secret's cacert."""
    config, problems = validate_config(
        source=s.engine_url, dest=s.volume_path, source_kind="imageio",
        username=s.username, password=s.password,
        ca_file=str(ca_file) if ca_file is not None else None, insecure=s.insecure,
        options=ImageioOptions(disk_id=s.disk_id),
        environ={f"{k}_proxy": v for k, v in s.proxies.items()}, front=POPULATOR)
    if config is None:
        raise ConfigError("; ".join(p.text for p in problems))
    return config
