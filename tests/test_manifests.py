"""The manifests docs/deploy.md gives users are checked, not only written: against the
Kubernetes schemas (kubernetes-validate, strict), and against our own CLI's options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

MANIFESTS = ROOT / "docs" / "manifests"
kv = pytest.importorskip("kubernetes_validate")


def _docs(name: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_the_ci_job_is_valid_kubernetes(version: str) -> None:
    for doc in _docs("conversion-job.yaml"):
        kv.validate(doc, version, strict=True)


def test_the_ci_job_runs_our_cli_as_cdi_runs_its_pods() -> None:
    from importer.cli import _parser

    job = next(d for d in _docs("conversion-job.yaml") if d["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]  # type: ignore[index]
    container = spec["containers"][0]
    assert container["command"] == ["/usr/bin/importer"]
    args = _parser().parse_args(container["args"])  # every flag is one the CLI takes
    assert (args.command, args.progress, args.log_format) == ("import", "lines", "json")
    assert spec["securityContext"]["runAsUser"] == 107
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts and args.dest.startswith("/data/")


def test_the_smoke_datavolume_has_cdi_s_shape() -> None:
    # CDI's CRD schema is not in kubernetes-validate's set: the fields CDI reads, by hand
    (dv,) = _docs("datavolume-http.yaml")
    assert (dv["apiVersion"], dv["kind"]) == ("cdi.kubevirt.io/v1beta1", "DataVolume")
    spec = dv["spec"]
    assert str(spec["source"]["http"]["url"]).startswith("https://")  # type: ignore[index]
    assert spec["storage"]["resources"]["requests"]["storage"]  # type: ignore[index]


def test_deploy_doc_names_cdi_s_image_variables() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for var in ("IMPORTER_IMAGE", "UPLOAD_SERVER_IMAGE", "CLONER_IMAGE"):
        assert var in text
    for target in ("--target uploadserver", "--target cloner"):
        assert target in text and target.split()[1] in (ROOT / "Containerfile").read_text()
    assert Path(MANIFESTS / "conversion-job.yaml").exists()
