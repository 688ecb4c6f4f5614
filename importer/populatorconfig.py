"""The settings of CDI's populator programs, from their flags and environment, as CDI's Forklift
populator controller gives them (pkg/controller/populators/forklift-populator.go):

    ovirt-populator --volume-path=/mnt/disk.img|/dev/block --secret-name=S --disk-id=ID
                    --engine-url=https://ENGINE --owner-uid=UID --pvc-size=BYTES
    openstack-populator --volume-path=/mnt/disk.img|/dev/block --endpoint=https://KEYSTONE
                    --secret-name=S --image-id=ID --owner-uid=UID --pvc-size=BYTES

with the secret's keys as environment variables (`envFrom`). oVirt's: `user`, `password`,
`cacert` (the engine's CA, PEM) and `insecureSkipVerify` (Go's ParseBool); OpenStack's: those
of sources/openstack/secret.py. Progress goes to `kubevirt_cdi_ovirt_progress_total{ownerUID}`
or `kubevirt_cdi_openstack_populator_progress_total{ownerUID}` on https://:8443/metrics, which
the controller scrapes (cmd/*-populator, pkg/monitoring/metrics/*-populator)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Front, ImportConfig, build_config, proxies_from_environment
from .errors import ConfigError
from .goflags import parse_go_bool, parse_go_flags
from .quantity import is_decimal
from .sources.openstack.secret import glance_options
from .sources.options import ImageioOptions

__all__ = ["OPENSTACK_USAGE", "OVIRT_USAGE", "OvirtPopulatorSettings", "PopulatorJob",
           "openstack_job", "ovirt_import_config", "ovirt_job", "read_ovirt_populator_settings"]


@dataclass(frozen=True, slots=True)
class PopulatorJob:
    """What a populator program does, read from its flags and environment."""

    owner_uid: str
    metrics_port: int
    termination_log: Path
    #: the log line that opens the population
    description: str
    #: the import (built when the metrics already answer: a problem found then is reported
    #: as the population's failure)
    config: Callable[[], ImportConfig]

OVIRT_USAGE = ("usage: ovirt-populator --engine-url=https://ENGINE --disk-id=ID "
               "--volume-path=/mnt/disk.img|/dev/block --owner-uid=UID --pvc-size=BYTES "
               "[--secret-name=NAME]   (credentials from the secret's keys user, password, "
               "cacert, insecureSkipVerify)")



def _populator_front(names: dict[str, str]) -> Front:
    """How a populator's messages name its settings: its flags and its secret's keys (Go's
    `--flag=value`); no password variable, the volume checked by the engine."""
    return Front(names, password_variable=None, check_dest=False, any_kind=True, separator="=")


POPULATOR = _populator_front({
    "source": "--engine-url", "disk_id": "--disk-id", "username": "the secret's user",
    "ca_file": "the secret's cacert"})


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


def _flags(argv: Sequence[str], names: tuple[str, ...], usage: str) -> dict[str, str]:
    """A populator's Go flags (klog's -v and -alsologtostderr accepted too)."""
    flags = parse_go_flags(argv, (*names, "owner-uid", "pvc-size", "volume-path",
                                  "secret-name", "v"), ("alsologtostderr",))
    if flags is None:
        raise ConfigError(f"unknown or incomplete arguments {list(argv)}; {usage}")
    return flags


def _require(flags: Mapping[str, str], names: tuple[str, ...], usage: str) -> None:
    missing = [f"--{n}" for n in names if not flags.get(n)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; {usage}")


def _pod_files(env: Mapping[str, str]) -> tuple[int, Path]:
    """The metrics port (IMPORTER_METRICS_PORT is ours, for tests; CDI listens on 8443) and the
    termination log under the pod's root."""
    port = env.get("IMPORTER_METRICS_PORT", "8443")
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    return int(port) if is_decimal(port) else 8443, root / "dev" / "termination-log"


def read_ovirt_populator_settings(argv: Sequence[str], env: Mapping[str, str]
                                  ) -> OvirtPopulatorSettings:
    flags = _flags(argv, ("engine-url", "disk-id", "cr-name", "cr-namespace"), OVIRT_USAGE)
    size = flags.get("pvc-size", "0")
    if not is_decimal(size) or int(size) <= 0:
        raise ConfigError("pvc-size must be greater than 0")  # CDI's words
    _require(flags, ("engine-url", "disk-id", "volume-path"), OVIRT_USAGE)
    insecure = env.get("insecureSkipVerify", "false") or "false"
    if parse_go_bool(insecure) is None:
        raise ConfigError(f"Invalid boolean value for insecureSkipVerify: {insecure}")
    username = env.get("user", "")
    password = env.get("password", "")
    if not username or not password:
        raise ConfigError("the secret gives no user or no password (keys user and password): "
                          "the engine needs both")
    port, termination_log = _pod_files(env)
    return OvirtPopulatorSettings(
        engine_url=flags["engine-url"], disk_id=flags["disk-id"],
        volume_path=Path(flags["volume-path"]), owner_uid=flags.get("owner-uid", ""),
        pvc_size=int(size), username=username, password=password,
        cacert=env.get("cacert") or None, insecure=bool(parse_go_bool(insecure)),
        metrics_port=port, termination_log=termination_log,
        proxies=proxies_from_environment(env))


def ovirt_import_config(s: OvirtPopulatorSettings) -> ImportConfig:
    """The import of the disk into the volume, through the one validator; the secret's cacert
    is trusted as the PEM text it is (no file holds it)."""
    return build_config(
        source=s.engine_url, dest=s.volume_path, source_kind="imageio",
        username=s.username, password=s.password,
        ca_pems=(s.cacert,) if s.cacert and not s.insecure else (), insecure=s.insecure,
        options=ImageioOptions(disk_id=s.disk_id),
        environ={f"{k}_proxy": v for k, v in s.proxies.items()}, front=POPULATOR)


def ovirt_job(argv: Sequence[str], env: Mapping[str, str]) -> PopulatorJob:
    s = read_ovirt_populator_settings(argv, env)
    return PopulatorJob(s.owner_uid, s.metrics_port, s.termination_log,
                        f"populating {s.volume_path} with oVirt disk {s.disk_id} from "
                        f"{s.engine_url}", lambda: ovirt_import_config(s))


OPENSTACK_USAGE = ("usage: openstack-populator --endpoint=https://KEYSTONE:5000/v3 "
                   "--image-id=ID --volume-path=/mnt/disk.img|/dev/block --owner-uid=UID "
                   "--pvc-size=BYTES [--secret-name=NAME]   (credentials from the secret's "
                   "keys: authType, username, password, projectName, applicationCredentialID, "
                   "applicationCredentialSecret, token, regionName, availability, cacert, "
                   "insecureSkipVerify, ...)")

OPENSTACK_POPULATOR = _populator_front({
    "source": "--endpoint", "image_id": "--image-id", "openstack_secret": "the secret",
    "username": "the secret's username"})


def openstack_job(argv: Sequence[str], env: Mapping[str, str]) -> PopulatorJob:
    flags = _flags(argv, ("endpoint", "image-id"), OPENSTACK_USAGE)
    size = flags.get("pvc-size", "0")
    if not is_decimal(size):
        raise ConfigError(f"invalid value {size!r} for flag -pvc-size: parse error")  # Go's
    _require(flags, ("endpoint", "image-id", "volume-path"), OPENSTACK_USAGE)
    options = glance_options(flags["image-id"], env)
    volume = Path(flags["volume-path"])
    port, termination_log = _pod_files(env)
    proxies = proxies_from_environment(env)

    def config() -> ImportConfig:
        return build_config(
            source=flags["endpoint"], dest=volume, source_kind="glance", options=options,
            environ={f"{k}_proxy": v for k, v in proxies.items()}, front=OPENSTACK_POPULATOR)

    return PopulatorJob(flags.get("owner-uid", ""), port, termination_log,
                        f"populating {volume} with Glance image {flags['image-id']} through "
                        f"{flags['endpoint']}", config)
