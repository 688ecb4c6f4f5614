"""ovirt-populator (issue 21) as CDI's Forklift populator controller starts it (its flags, the
secret's keys as environment), against the real imageio daemon behind the tests' engine; the
progress metric scraped from its HTTPS endpoint while the transfer is being prepared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ...conftest import ROOT, free_port, loop_device, same_disk, scrape_progress
from .fixtures import Ovirt
from .servers import FakeEngine


def _populate(ovirt: Ovirt, volume: Path, *, disk_id: str | None = None, pvc_size: int = 1 << 30,
              env: dict[str, str] | None = None, port: int | None = None
              ) -> subprocess.Popen[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")}
    e.update({"user": FakeEngine.USER, "password": FakeEngine.PASSWORD,
              "cacert": ovirt.pki.ca_file.read_text(), "insecureSkipVerify": "false",
              "IMPORTER_METRICS_PORT": str(port or free_port())})
    e.update(env or {})
    args = [f"--volume-path={volume}", "--secret-name=ovirt-secret",
            f"--disk-id={disk_id or ovirt.cold.id}", f"--engine-url={ovirt.engine.url}",
            "--owner-uid=pvc-uid-1", f"--pvc-size={pvc_size}"]
    return subprocess.Popen([sys.executable, "-m", "importer.ovirt_populator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            cwd=ROOT)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_file_volume_is_populated_with_progress_on_the_metric_cdi_scrapes(
        ovirt: Ovirt, tmp_path: Path) -> None:
    ovirt.engine.init_polls = 6  # the transfer is ready at the 6th poll: time to scrape
    port = free_port()
    volume = tmp_path / "mnt" / "disk.img"
    volume.parent.mkdir()
    proc = _populate(ovirt, volume, port=port)
    seen, body = scrape_progress(proc, port, "pvc-uid-1", timeout=60,
                                 metric="kubevirt_cdi_ovirt_progress_total")
    code, err = _finish(proc)
    assert code == 0, err
    assert seen and all(0.0 <= v <= 100.0 for v in seen), body
    assert seen == sorted(seen)
    assert same_disk(volume, ovirt.cold_image)
    assert len(ovirt.engine.actions("finalize")) == 1 and not ovirt.engine.actions("cancel")
    assert FakeEngine.PASSWORD not in err and "BEGIN CERTIFICATE" not in err
    assert '"population complete"' in err or "population complete" in err


def test_a_block_volume_is_overwritten_whole(ovirt: Ovirt, tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", ovirt.cold.size, b"\xa5") as dev:
        code, err = _finish(_populate(ovirt, dev))
        assert code == 0, err
        assert same_disk(dev, ovirt.cold_image)  # every zero extent zeroed over the old bytes


def test_insecure_skip_verify_needs_no_ca(ovirt: Ovirt, tmp_path: Path) -> None:
    code, err = _finish(_populate(ovirt, tmp_path / "disk.img",
                                  env={"cacert": "", "insecureSkipVerify": "true"}))
    assert code == 0, err
    assert same_disk(tmp_path / "disk.img", ovirt.cold_image)


def test_failures_are_named_and_cancel_the_transfer(ovirt: Ovirt, tmp_path: Path) -> None:
    code, err = _finish(_populate(ovirt, tmp_path / "a.img", env={"password": "wrong"}))
    assert code == 1 and "Traceback" not in err
    assert "password" in err.lower() or "401" in err, err
    code, err = _finish(_populate(ovirt, tmp_path / "b.img", env={"cacert": ""}))
    assert code == 1 and "certificate" in err.lower(), err
    code, err = _finish(_populate(ovirt, tmp_path / "c.img", disk_id="no-such-disk"))
    assert code == 1 and "no-such-disk not found" in err, err
    code, err = _finish(_populate(ovirt, tmp_path / "d.img", pvc_size=0))
    assert code == 1 and "pvc-size must be greater than 0" in err
    code, err = _finish(_populate(ovirt, tmp_path / "e.img",
                                  env={"insecureSkipVerify": "maybe"}))
    assert code == 1 and "Invalid boolean value for insecureSkipVerify: maybe" in err
    assert not ovirt.engine.actions("finalize")
    for name in "abcde":
        assert not (tmp_path / f"{name}.img").exists()
