"""cdi-source-update-poller (issue 21) against the real registries the tests run (docker-registry,
plain and TLS + htpasswd) and the Kubernetes API stand-in (tests/kube_api.py: no API server can
run here), through the real program as CDI's CronJob starts it. The digest it records is checked
against skopeo's reading of the same manifest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import ROOT, run
from .kube_api import KubeApi, apply_patch, kube_api
from .registry_server import PASSWORD, USER, Disks, Registry

NS, CRON = "golden-images", "fedora-image-cron"
DESIRED = "cdi.kubevirt.io/storage.import.sourceDesiredDigest"
LAST = "cdi.kubevirt.io/storage.import.lastCronTime"


@pytest.fixture
def api(tmp_path: Path, ca: object) -> Iterator[KubeApi]:
    with kube_api(tmp_path, ca) as server:
        yield server


def _manifest_digest(reg: Registry, repo: str, tag: str) -> str:
    tls = ["--cert-dir", str(reg.ca_dir)] if reg.tls else ["--tls-verify=false"]
    creds = ["--creds", f"{USER}:{PASSWORD}"] if reg.auth else []
    raw = run("skopeo", "inspect", "--raw", *tls, *creds, f"docker://{reg.host}/{repo}:{tag}").stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _retag(reg: Registry, src: str, dst: str) -> None:
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{reg.host}/cd:{src}", f"docker://{reg.host}/{dst}")


def _poll(api: KubeApi, tmp_path: Path, url: str, *extra: str, env: dict[str, str] | None = None,
          kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")}
    e["KUBECONFIG"] = str(kubeconfig or api.kubeconfig(tmp_path / "kubeconfig"))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "importer.poller", "-ns", NS, "-cron", CRON,
                           "-url", url, *extra], capture_output=True, text=True, env=e,
                          cwd=ROOT, timeout=120)


def test_a_new_digest_is_recorded_then_left_alone_then_updated(
        api: KubeApi, plain: Registry, disks: Disks, tmp_path: Path) -> None:
    _retag(plain, "qcow2", "poll:latest")
    api.add_cron(NS, CRON, {"cdi.kubevirt.io/storage.import.status": "kept"})
    url = f"docker://{plain.host}/poll:latest"
    r = _poll(api, tmp_path, url, env={"INSECURE_TLS": "true"})
    assert r.returncode == 0, r.stderr
    first = _manifest_digest(plain, "poll", "latest")
    ann = api.annotations(NS, CRON)
    assert ann[DESIRED] == first and "Digest updated" in r.stderr
    assert ann["cdi.kubevirt.io/storage.import.status"] == "kept"
    stamp = datetime.fromisoformat(ann[LAST])
    assert stamp.tzinfo is not None and abs(stamp.timestamp() - datetime.now().timestamp()) < 60
    patch = [q for q in api.requests if q.method == "PATCH"][-1]
    assert patch.headers["content-type"] == "application/json-patch+json"
    assert patch.headers["authorization"].lower() == f"bearer {api.token}"
    assert patch.path == f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/dataimportcrons/{CRON}"
    ops = json.loads(patch.body)
    assert [op["path"] for op in ops] == [
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime",
        "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"]
    # the same image: only the time moves
    r = _poll(api, tmp_path, url, env={"INSECURE_TLS": "true"})
    assert r.returncode == 0 and "No digest update" in r.stderr, r.stderr
    ops = json.loads([q for q in api.requests if q.method == "PATCH"][-1].body)
    assert len(ops) == 1 and ops[0]["path"].endswith("lastCronTime")
    # the tag moves to another image (a multi-arch index): its digest is recorded
    _retag(plain, "multi", "poll:latest")
    subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false",
                    "--dest-tls-verify=false", f"docker://{plain.host}/cd:multi",
                    f"docker://{plain.host}/poll:latest"], check=True, capture_output=True)
    r = _poll(api, tmp_path, url, env={"INSECURE_TLS": "true"})
    assert r.returncode == 0, r.stderr
    second = _manifest_digest(plain, "poll", "latest")
    assert second != first and api.annotations(NS, CRON)[DESIRED] == second


def test_a_cron_without_annotations_gets_them(api: KubeApi, plain: Registry, disks: Disks,
                                              tmp_path: Path) -> None:
    """CDI's patch adds under /metadata/annotations, which fails when the map is missing; ours
    creates it first."""
    api.add_cron(NS, CRON, None)
    with pytest.raises(ValueError, match="missing path"):  # what CDI's patch alone meets
        apply_patch(api.crons[(NS, CRON)], [{"op": "add", "path": "/metadata/annotations/x~1y",
                                             "value": "v"}])
    r = _poll(api, tmp_path, f"docker://{plain.host}/cd:raw", env={"INSECURE_TLS": "true"})
    assert r.returncode == 0, r.stderr
    assert api.annotations(NS, CRON)[DESIRED] == _manifest_digest(plain, "cd", "raw")


def test_credentials_and_the_certificate_directory_reach_the_registry(
        api: KubeApi, secure: Registry, plain: Registry, disks: Disks, tmp_path: Path) -> None:
    """A TLS registry with htpasswd: the CA from -certdir, the user and password as CDI's secret
    gives them; one of the pair alone counts as none, as in CDI."""
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-cert-dir", str(secure.ca_dir),
        "--dest-creds", f"{USER}:{PASSWORD}", f"docker://{plain.host}/cd:raw",
        f"docker://{secure.host}/private:v1")
    api.add_cron(NS, CRON, {})
    url = f"docker://{secure.host}/private:v1"
    creds = {"IMPORTER_ACCESS_KEY_ID": USER, "IMPORTER_SECRET_KEY": PASSWORD}
    r = _poll(api, tmp_path, url, "-certdir", str(secure.ca_dir), env=creds)
    assert r.returncode == 0, r.stderr
    assert api.annotations(NS, CRON)[DESIRED] == _manifest_digest(secure, "private", "v1")
    assert PASSWORD not in r.stderr
    r = _poll(api, tmp_path, url, "-certdir", str(secure.ca_dir),
              env={"IMPORTER_ACCESS_KEY_ID": USER})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "requires a user name and password" in r.stderr, r.stderr
    r = _poll(api, tmp_path, url, env=creds)  # no CA: the registry's certificate is unknown
    assert r.returncode == 1 and "certificate" in r.stderr.lower(), r.stderr


def test_the_api_is_never_reached_through_the_import_proxy(api: KubeApi, plain: Registry,
                                                           disks: Disks, tmp_path: Path) -> None:
    """The controller sets HTTPS_PROXY for the registry; CDI clears it for API calls, and so do
    we (the proxy here listens nowhere)."""
    api.add_cron(NS, CRON, {})
    r = _poll(api, tmp_path, f"docker://{plain.host}/cd:raw",
              env={"INSECURE_TLS": "true", "HTTPS_PROXY": "http://127.0.0.1:9",
                   "https_proxy": "http://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["no-such-cron", "bad-token", "no-such-tag", "missing-flags",
                                  "api-down", "not-a-registry-url"])
def test_failures_say_what_to_check(api: KubeApi, plain: Registry, disks: Disks, tmp_path: Path,
                                    case: str) -> None:
    api.add_cron(NS, CRON, {})
    url = f"docker://{plain.host}/cd:raw"
    env = {"INSECURE_TLS": "true"}
    if case == "no-such-cron":
        r = subprocess.run([sys.executable, "-m", "importer.poller", "-ns", NS, "-cron", "gone",
                            "-url", url], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, **env,
                                "KUBECONFIG": str(api.kubeconfig(tmp_path / "kc"))})
        words = "no such DataImportCron"
    elif case == "bad-token":
        r = _poll(api, tmp_path, url, env=env,
                  kubeconfig=api.kubeconfig(tmp_path / "kc", token="wrong"))
        words = "token was refused"
    elif case == "no-such-tag":
        r = _poll(api, tmp_path, f"docker://{plain.host}/cd:nope", env=env)
        words = "not found"
    elif case == "missing-flags":
        r = subprocess.run([sys.executable, "-m", "importer.poller", "-ns", NS], text=True,
                           capture_output=True, cwd=ROOT, timeout=60)
        words = "One or more mandatory parameters are missing: -cron, -url"
    elif case == "api-down":
        api.port = 9  # nothing listens there
        r = _poll(api, tmp_path, url, env=env)
        words = "did not answer"
    else:
        r = _poll(api, tmp_path, "http://example.invalid/disk.img", env=env)
        words = "docker://REGISTRY/REPO"
    assert r.returncode == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
