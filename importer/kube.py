"""DataImportCrons through the Kubernetes API, with the official Python client: what
cdi-source-update-poller reads and patches. Errors of the client (ApiException, urllib3's
connection errors, its configuration loader) are translated here into KubernetesApiError and
ConfigError, with what to check.

The API is never reached through the import proxy: CDI clears the proxy for API calls, and the
client would otherwise take it from HTTPS_PROXY, which the controller sets for the registry."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, KubernetesApiError

__all__ = ["GROUP", "PLURAL", "VERSION", "DataImportCrons"]

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "dataimportcrons"
JSON_PATCH = "application/json-patch+json"
#: seconds for a connection and for an answer; a few tries for a restarting API server
TIMEOUT = (10.0, 30.0)
RETRIES = 3


class DataImportCrons:
    def __init__(self, kubeconfig: Path | None, server: str | None) -> None:
        # the client takes ~0.3 s to import: only this program pays for it
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            if kubeconfig is not None:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig), client_configuration=cfg)
            elif server is None:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            where = f"the kubeconfig {kubeconfig}" if kubeconfig else \
                "the pod's service account (in-cluster configuration)"
            raise ConfigError(f"cannot configure the Kubernetes API client from {where}: "
                              f"{exc}") from exc
        if server is not None:
            cfg.host = server
        cfg.proxy = None  # never the import proxy (see the module's note)
        cfg.retries = RETRIES
        self.host = cfg.host
        self._api = client.CustomObjectsApi(client.ApiClient(cfg))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        what = f"getting DataImportCron {namespace}/{name}"
        with _errors(what, self.host):
            obj = self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT)
        if not isinstance(obj, dict):
            raise KubernetesApiError(f"{what}: the API answered {type(obj).__name__}, not an "
                                     "object")
        return obj

    def patch(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902), as CDI's poller sends it."""
        with _errors(f"patching DataImportCron {namespace}/{name}", self.host):
            self._api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, ops, _content_type=JSON_PATCH,
                _request_timeout=TIMEOUT)


@contextlib.contextmanager
def _errors(what: str, host: str) -> Iterator[None]:
    """The client's exceptions as KubernetesApiError, naming the request and what to check."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        status = int(exc.status or 0)
        detail = _status_message(exc.body) or exc.reason or "no detail"
        hint = {401: "the service account token was refused",
                403: "the service account lacks RBAC permission for dataimportcrons "
                     "(CDI's cronjob service account has it)",
                404: "no such DataImportCron (deleted meanwhile?)"}.get(status, "")
        err = KubernetesApiError(f"{what} failed: HTTP {status} {detail}"
                                 + (f"; {hint}" if hint else ""))
        err.transient = status >= 500 or status == 429
        raise err from exc
    except (HTTPError, OSError) as exc:
        err = KubernetesApiError(f"{what} failed: the Kubernetes API at {host} did not answer "
                                 f"({exc.__class__.__name__}: {exc})")
        err.transient = True
        raise err from exc


def _status_message(body: object) -> str:
    """The message of a Kubernetes Status object in an error body."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    message = status.get("message") if isinstance(status, dict) else None
    return str(message) if message else ""
