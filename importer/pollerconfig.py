"""The settings of cdi-source-update-poller, from its flags and environment, as CDI's
DataImportCron controller gives them (pkg/controller/dataimportcron-controller.go, InitPollerPod):

    /usr/bin/cdi-source-update-poller -ns NS -cron NAME -url docker://REGISTRY/REPO:TAG
                                      [-certdir /certs] [-kubeconfig FILE] [-server URL]

with IMPORTER_ACCESS_KEY_ID / IMPORTER_SECRET_KEY (the registry credentials, a pair),
INSECURE_TLS, the import proxy (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and its CA certificates
mounted at /proxycerts. The Kubernetes API is found by -kubeconfig, $KUBECONFIG, -server, or the
pod's service account (in-cluster), in that order, as client-go's BuildConfigFromFlags does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import HttpOptions, proxies_from_environment
from .errors import ConfigError
from .goflags import parse_go_bool, parse_go_flags

__all__ = ["USAGE", "PollerSettings", "read_poller_settings"]

USAGE = ("usage: cdi-source-update-poller -ns NAMESPACE -cron NAME -url docker://REGISTRY/REPO:TAG "
         "[-certdir DIR] [-kubeconfig FILE] [-server URL]")


@dataclass(frozen=True, slots=True)
class PollerSettings:
    namespace: str
    cron: str
    url: str
    #: the registry: credentials, CA directories (-certdir, /proxycerts), TLS, proxies
    http: HttpOptions
    kubeconfig: Path | None
    server: str | None
    termination_log: Path


def read_poller_settings(argv: Sequence[str], env: Mapping[str, str]) -> PollerSettings:
    flags = parse_go_flags(argv, ("ns", "cron", "url", "certdir", "kubeconfig", "server", "v"),
                           ("alsologtostderr", "help", "h"))
    if flags is None or "help" in flags or "h" in flags:
        raise ConfigError(USAGE)
    missing = [f"-{name}" for name in ("ns", "cron", "url") if not flags.get(name)]
    if missing:
        # CDI's words (log.Fatalf), and which ones
        raise ConfigError(f"One or more mandatory parameters are missing: {', '.join(missing)}; "
                          f"{USAGE}")
    url = flags["url"]
    if not url.startswith("docker://"):
        raise ConfigError(f"-url {url!r}: a DataImportCron polls a registry image, "
                          "docker://REGISTRY/REPO[:TAG|@DIGEST]")
    insecure_text = env.get("INSECURE_TLS", "") or "false"
    if parse_go_bool(insecure_text) is None:
        raise ConfigError(f"INSECURE_TLS={insecure_text!r} is not a boolean (true or false)")
    root = Path(env.get("IMPORTER_FS_ROOT", "/"))
    proxy_certs = root / "proxycerts"
    ca_dir = flags.get("certdir") or None
    username = env.get("IMPORTER_ACCESS_KEY_ID") or None
    password = env.get("IMPORTER_SECRET_KEY") or None
    if not (username and password):  # CDI: registry credentials count only as a pair
        username = password = None
    http = HttpOptions(
        username=username, password=password,
        ca_dir=root / ca_dir.lstrip("/") if ca_dir else None,
        extra_ca_dirs=(proxy_certs,) if proxy_certs.is_dir() else (),
        insecure=bool(parse_go_bool(insecure_text)),
        proxies=proxies_from_environment(env))
    kubeconfig = flags.get("kubeconfig") or env.get("KUBECONFIG") or None
    return PollerSettings(
        namespace=flags["ns"], cron=flags["cron"], url=url, http=http,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        server=flags.get("server") or None,
        termination_log=root / "dev" / "termination-log")
