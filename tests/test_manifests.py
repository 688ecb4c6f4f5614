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
    for var in ("IMPORTER_IMAGE", "UPLOAD_SERVER_IMAGE", "CLONER_IMAGE", "OVIRT_POPULATOR_IMAGE"):
        assert var in text
    for target in ("--target uploadserver", "--target cloner"):
        assert target in text and target.split()[1] in (ROOT / "Containerfile").read_text()
    assert Path(MANIFESTS / "conversion-job.yaml").exists()


def test_the_ci_job_runs_again_into_the_same_volume(tmp_path: Path) -> None:
    """Its arguments, run twice into one destination (a served image instead of the URL): the
    second run replaces the first's disk instead of failing on it."""
    import subprocess
    import sys

    from .conftest import make_seed

    job = next(d for d in _docs("conversion-job.yaml") if d["kind"] == "Job")
    args = list(job["spec"]["template"]["spec"]["containers"][0]["args"])  # type: ignore[index]
    seed = make_seed(tmp_path / "seed.raw", size=4 << 20)
    dest = tmp_path / "data" / "disk.img"
    dest.parent.mkdir()
    args[1], args[2] = str(seed), str(dest)
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "importer", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert dest.stat().st_size == 10 << 30  # --image-size, sparse
