"""openstack-populator (issue 21) as CDI's Forklift populator controller starts it: its flags,
the secret's keys as its environment, against the real Keystone and Glance; the progress
metric scraped from its HTTPS endpoint as the controller does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ...conftest import ROOT, Images, free_port, loop_device, same_disk, scrape_progress
from .fixtures import Glance
from .servers import ADMIN_PASSWORD


def _populate(glance: Glance, volume: Path, *, image_id: str | None = None,
              env: dict[str, str] | None = None, port: int | None = None,
              identity: str | None = None, root: Path | None = None) -> subprocess.Popen[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")}
    e.update(glance.cloud.secret())
    e["IMPORTER_METRICS_PORT"] = str(port or free_port())
    if root is not None:
        e["IMPORTER_FS_ROOT"] = str(root)
    e.update(env or {})
    args = [f"--volume-path={volume}", f"--endpoint={identity or glance.cloud.keystone_tls}",
            "--secret-name=openstack-secret", f"--image-id={image_id or glance.qcow2_id}",
            "--owner-uid=pvc-uid-2", "--pvc-size=1073741824"]
    return subprocess.Popen([sys.executable, "-m", "importer.openstack_populator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            cwd=ROOT)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and ADMIN_PASSWORD not in err and "BEGIN CERT" not in err
    return proc.returncode, err


def test_a_file_volume_is_populated_with_progress_on_the_metric_cdi_scrapes(
        glance: Glance, images: Images, tmp_path: Path) -> None:
    port = free_port()
    volume = tmp_path / "mnt" / "disk.img"
    volume.parent.mkdir()
    # the big raw image over the TLS proxy: long enough to be scraped while it runs
    proc = _populate(glance, volume, image_id=glance.raw_id, port=port)
    seen, body = scrape_progress(proc, port, "pvc-uid-2", timeout=60,
                                 metric="kubevirt_cdi_openstack_populator_progress_total")
    code, err = _finish(proc)
    assert code == 0, err
    assert all(0.0 <= v <= 100.0 for v in seen) and seen == sorted(seen), body
    assert same_disk(volume, images.raw)
    assert "population complete" in err


def test_a_block_volume_gets_the_converted_disk(glance: Glance, images: Images,
                                                tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", 32 << 20, b"\xa5") as dev:
        code, err = _finish(_populate(glance, dev))
        assert code == 0, err
        with open(dev, "rb") as d, open(images.raw, "rb") as r:
            assert d.read(images.raw.stat().st_size) == r.read()  # holes zeroed on the device


def test_failures_are_named_and_leave_a_termination_message(glance: Glance,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "termination-log").write_text("")
    code, err = _finish(_populate(glance, tmp_path / "a.img", root=root,
                                  env={"password": "wrong"}))
    assert code == 1 and "refused the password login of 'admin'" in err, err
    message = (root / "dev" / "termination-log").read_text()
    assert message.startswith("Unable to populate the volume: Keystone at https://127.0.0.1")
    code, err = _finish(_populate(glance, tmp_path / "b.img", env={"cacert": ""}))
    assert code == 1 and "certificate" in err.lower(), err
    code, err = _finish(_populate(glance, tmp_path / "c.img", env={"authType": "saml"}))
    assert code == 2 and "unsupported authentication type 'saml'" in err, err  # a setting
    code, err = _finish(_populate(glance, tmp_path / "d.img", image_id="missing-image"))
    assert code == 1 and "Glance image missing-image not found" in err, err
    for name in "abcd":
        assert not (tmp_path / f"{name}.img").exists()


def test_insecure_skip_verify_needs_no_ca(glance: Glance, images: Images, tmp_path: Path) -> None:
    code, err = _finish(_populate(glance, tmp_path / "disk.img",
                                  env={"cacert": "", "insecureSkipVerify": "true"}))
    assert code == 0, err
    assert same_disk(tmp_path / "disk.img", images.raw)


def test_help_and_bad_flags() -> None:
    done = subprocess.run([sys.executable, "-m", "importer.openstack_populator", "-help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "--image-id" in done.stdout
    done = subprocess.run([sys.executable, "-m", "importer.openstack_populator", "--bogus=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1 and "unknown or incomplete arguments" in done.stderr
