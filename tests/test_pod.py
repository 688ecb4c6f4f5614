"""The CDI pod front-end as the controller sees it: environment in, exit code, termination
message, /data and the progress metric out. Runs `importer pod` in a child process with the
fixed paths under a temporary root (IMPORTER_FS_ROOT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from importer.podconfig import get_required_space, get_usable_space
from importer.termination import MAX_BYTES, json_message, text_message

from .conftest import (
    ROOT,
    SEED_SIZE,
    Images,
    Nginx,
    free_port,
    loop_device,
    same_disk,
    scrape_progress,
)

GiB = 1 << 30


@dataclass
class Pod:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def termination(self) -> str:
        return (self.root / "dev" / "termination-log").read_text()

    def env(self, **kw: str) -> dict[str, str]:
        base = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(self.root),
                "IMPORTER_METRICS_PORT": str(free_port()), "OWNER_UID": "uid-123",
                "IMPORTER_SOURCE": "http", "IMPORTER_CONTENTTYPE": "kubevirt",
                "IMPORTER_IMAGE_SIZE": "64Mi", "FILESYSTEM_OVERHEAD": "0", "PREALLOCATION": "false",
                "INSECURE_TLS": "false", "IMPORTER_ENDPOINT": "", "IMPORTER_CHECKSUM": "",
                "IMPORTER_CURRENT_CHECKPOINT": "", "IMPORTER_PREVIOUS_CHECKPOINT": ""}
        base.update(kw)
        return base

    def start(self, **kw: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "importer", "pod", "-alsologtostderr", "-v=1"],
                                cwd=ROOT, env=self.env(**kw), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def run(self, **kw: str) -> tuple[int, str]:
        p = self.start(**kw)
        _out, err = p.communicate(timeout=120)
        return p.returncode, err


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    (tmp_path / "data").mkdir()
    (tmp_path / "dev").mkdir()
    return Pod(tmp_path)


def test_http_qcow2_to_file(pod: Pod, nginx: Nginx, images: Images) -> None:
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), FILESYSTEM_OVERHEAD="0.055")
    assert code == 0, err
    assert pod.termination == ('{"scratchSpaceRequired":false,"preallocationApplied":false,'
                               '"message":"Import Complete"}')
    disk = pod.data / "disk.img"
    assert disk.stat().st_mode & 0o777 == 0o660
    # resized to min(usable space, IMAGE_SIZE) with the overhead formula, never shrunk
    assert disk.stat().st_size == get_usable_space(Decimal("0.055"), 64 << 20)
    assert same_disk(images.raw, disk)
    assert "Successfully completed fsync" in err
    for line in err.splitlines():
        json.loads(line)  # every log line is JSON


@pytest.mark.parametrize(("converter", "plan"), [("", "extents"), ("qemu-img", "convert")])
def test_converter_is_chosen_by_importer_converter(pod: Pod, nginx: Nginx, images: Images,
                                                   converter: str, plan: str) -> None:
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), IMPORTER_CONVERTER=converter)
    assert code == 0, err
    assert same_disk(images.raw, pod.data / "disk.img")
    done = [json.loads(line) for line in err.splitlines() if '"import complete"' in line]
    assert done and done[0]["plan"] == plan, err[-2000:]


def test_an_unknown_converter_is_a_configuration_error(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), IMPORTER_CONVERTER="magic")
    assert code == 1 and "IMPORTER_CONVERTER='magic'" in pod.termination


def test_archive_and_blank_file(pod: Pod, nginx: Nginx, images: Images) -> None:
    import tarfile

    with tarfile.open(images.dir / "pod.tar", "w") as tf:
        tf.add(images["tiny.raw"], arcname="dir/tiny.raw")
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("pod.tar"), IMPORTER_CONTENTTYPE="archive")
    assert code == 0, err
    assert (pod.data / "dir" / "tiny.raw").read_bytes() == images["tiny.raw"].read_bytes()
    for f in list(pod.data.iterdir()):
        subprocess.run(["rm", "-rf", str(f)], check=True)
    code, err = pod.run(IMPORTER_SOURCE="none", IMPORTER_IMAGE_SIZE="10Mi", PREALLOCATION="true")
    assert code == 0, err
    assert pod.termination == '{"preallocationApplied":true,"message":"Import Complete"}'
    disk = pod.data / "disk.img"
    assert disk.stat().st_size == 10 << 20 and disk.stat().st_blocks * 512 >= 10 << 20
    assert disk.stat().st_mode & 0o777 == 0o660
    code, _ = pod.run(IMPORTER_SOURCE="none", IMPORTER_CONTENTTYPE="archive")
    assert code == 1 and pod.termination == "Cannot create empty disk with content type archive"


def test_not_found_is_a_plain_text_failure(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("nope.img"))
    assert code == 1
    assert pod.termination.startswith("Unable to connect to http data source: ")
    assert "404" in pod.termination and "\n" not in pod.termination


def test_checksum_mismatch_exits_0_with_the_recognised_message(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw.gz"),
                      IMPORTER_CHECKSUM="sha256:" + "0" * 64)
    assert code == 0
    msg = json.loads(pod.termination)
    assert list(msg) == ["message"] and "checksum mismatch" in msg["message"]
    assert msg["message"].startswith("Unable to process data: checksum validation failed")
    assert list(pod.data.iterdir()) == []


def test_target_too_small(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), IMPORTER_IMAGE_SIZE="8Mi")
    assert code == 1
    assert "is larger than the reported available" in pod.termination  # -> "too small"
    assert pod.termination.endswith(". A larger PVC is required")  # CDI's sentence
    assert list(pod.data.iterdir()) == []


def test_scratch_only_when_needed(pod: Pod, nginx: Nginx, images: Images) -> None:
    # streamable: no scratch asked for, even without /scratch
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw.xz"))
    assert code == 0 and json.loads(pod.termination)["scratchSpaceRequired"] is False, err
    # a gzip'd qcow2 streams through the native reader: no scratch either
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2.gz"))
    assert code == 0 and json.loads(pod.termination)["scratchSpaceRequired"] is False, err
    # qemu-img cannot read it from a stream: scratch is required...
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2.gz"), IMPORTER_CONVERTER="qemu-img")
    assert code == 0
    assert json.loads(pod.termination)["scratchSpaceRequired"] is True
    assert not (pod.data / "disk.img").exists()
    # ...and the same import succeeds once /scratch is mounted
    (pod.root / "scratch").mkdir()
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2.gz"), IMPORTER_CONVERTER="qemu-img")
    assert code == 0, err
    assert json.loads(pod.termination)["message"] == "Import Complete"
    assert same_disk(images.raw, pod.data / "disk.img")
    assert list((pod.root / "scratch").iterdir()) == []


def test_every_invalid_value_reported_at_once(pod: Pod) -> None:
    code, _ = pod.run(IMPORTER_SOURCE="ftp", PREALLOCATION="maybe", IMPORTER_IMAGE_SIZE="big",
                      FILESYSTEM_OVERHEAD="x", CACHE_MODE="fast", IMPORTER_CHECKSUM="md5:1")
    assert code == 2  # CDI panics (2) on an unparsable image size
    for name in ("IMPORTER_SOURCE", "PREALLOCATION", "IMPORTER_IMAGE_SIZE", "FILESYSTEM_OVERHEAD",
                 "CACHE_MODE", "IMPORTER_CHECKSUM"):
        assert name in pod.termination


def test_tls_credentials_and_headers_from_cdi_paths(pod: Pod, nginx: Nginx, images: Images) -> None:
    # the CA arrives in /proxycerts (any file name), credentials and headers through CDI's env
    (pod.root / "proxycerts").mkdir()
    (pod.root / "proxycerts" / "..2026_data").write_bytes(b"ignored dot file")
    (pod.root / "proxycerts" / "ca.crt").write_bytes((nginx.ca_dir / "test-ca.pem").read_bytes())
    hdr = pod.root / "extraheaders" / "0"
    hdr.mkdir(parents=True)
    (hdr / "token").write_text("X-Secret-Token: hunter2\n")
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.tls_url("disk.qcow2"),
                        IMPORTER_ACCESS_KEY_ID="tester", IMPORTER_SECRET_KEY="s3cret",
                        IMPORTER_EXTRA_HEADER_0="X-Public: 1")
    assert code == 0, err
    assert same_disk(images.raw, pod.data / "disk.img")
    assert "s3cret" not in err and "hunter2" not in err and "czNjcmV0" not in err


def test_vm_sources_name_their_missing_variables(pod: Pod) -> None:
    code, _ = pod.run(IMPORTER_SOURCE="vddk", IMPORTER_ENDPOINT="https://127.0.0.1:1/sdk",
                      IMPORTER_ACCESS_KEY_ID="u", IMPORTER_SECRET_KEY="p")
    assert code == 1
    assert "IMPORTER_UUID is needed" in pod.termination
    assert "IMPORTER_BACKING_FILE is needed" in pod.termination
    code, _ = pod.run(IMPORTER_SOURCE="imageio", IMPORTER_ENDPOINT="https://127.0.0.1:1/api",
                      IMPORTER_ACCESS_KEY_ID="u", IMPORTER_DISK_ID="d",
                      IMPORTER_PREVIOUS_CHECKPOINT="s1")
    assert code == 1 and "previous checkpoint set without current" in pod.termination


def test_progress_metric_rises_to_100_during_import(pod: Pod, nginx: Nginx,
                                                     tmp_path: Path) -> None:
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = pod.start(IMPORTER_ENDPOINT=nginx.url("crawl/disk.raw.gz"), IMPORTER_METRICS_PORT=str(port),
                  TMPDIR=str(tmp))
    values, other = scrape_progress(p, port, "uid-123")
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert len(values) >= 3 and values == sorted(values)  # a counter: it only rises
    assert 0 < values[-1] < 100 or values[-1] == 100
    assert any(0 < v < 100 for v in values)
    for name in ("importer_bytes_read_total", "importer_bytes_written_total",
                 "importer_zero_bytes_total", "importer_phase{", "importer_transfer_rate"):
        assert name in other
    progress_lines = [json.loads(line) for line in err.splitlines() if '"msg": "progress"' in line]
    assert progress_lines and "percent" in progress_lines[0]
    assert list(tmp.iterdir()) == []  # the metrics' certificate and key are not left behind


def test_sigterm_exits_143_without_success(pod: Pod, nginx: Nginx) -> None:
    p = pod.start(IMPORTER_ENDPOINT=nginx.url("crawl/disk.raw"))
    deadline = time.monotonic() + 20
    while not (pod.data / "disk.img.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == 143
    assert "SIGTERM" in pod.termination and "Import Complete" not in pod.termination
    assert list(pod.data.iterdir()) == []


def test_sigterm_after_success_keeps_the_success(pod: Pod, nginx: Nginx) -> None:
    """The kubelet may stop the pod while the metrics linger after success: the import is done
    and answered, so the exit stays 0 (it was 1, with a trace, before)."""
    p = pod.start(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"))
    term = pod.root / "dev" / "termination-log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (term.exists() and "Import Complete" in
                                               term.read_text()):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert json.loads(pod.termination)["message"] == "Import Complete"


@pytest.fixture
def loop_dev(tmp_path: Path) -> Iterator[Path]:
    with loop_device(tmp_path / "block.img", 48 << 20, b"\x77") as dev:
        yield dev


def test_block_volume_import_and_blank(pod: Pod, nginx: Nginx, images: Images, loop_dev: Path
                                       ) -> None:
    (pod.root / "dev" / "cdi-block-volume").symlink_to(loop_dev)
    pod.data.rmdir()
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw.xz"), FILESYSTEM_OVERHEAD="0")
    assert code == 0, err
    assert json.loads(pod.termination)["message"] == "Import Complete"
    with open(loop_dev, "rb") as f:
        assert f.read(SEED_SIZE) == images.raw.read_bytes()
    code, err = pod.run(IMPORTER_SOURCE="none", PREALLOCATION="true")
    assert code == 0, err
    assert pod.termination == '{"preallocationApplied":true,"message":"Import Complete"}'
    with open(loop_dev, "rb") as f:
        assert f.read() == bytes(48 << 20)
    code, _ = pod.run(IMPORTER_SOURCE="none", PREALLOCATION="false")
    assert code == 0
    assert pod.termination == '{"preallocationApplied":false,"message":"Import Complete"}'


@pytest.mark.parametrize(("overhead", "avail", "usable"), [
    ("0", 1 * GiB, 1 * GiB),
    ("0.055", 1 * GiB, 1017118720),  # ceil(2^30 / 1.055) rounded down to 1 MiB
    ("0.1", 10 * GiB, 9761193984),  # ceil(10 GiB / 1.1) = 9761289310 -> 9309 MiB
])
def test_usable_space_formula(overhead: str, avail: int, usable: int) -> None:
    assert get_usable_space(Decimal(overhead), avail) == usable


def test_required_space_formula() -> None:
    assert get_required_space(Decimal("0.055"), 1 * GiB) == 1132797625  # ceil(2^30 * 1.055)
    assert get_required_space(Decimal("0"), 1) == 1 << 20


def test_termination_messages_fit_4096_bytes() -> None:
    long = "Unable to process data: " + "x" * 10_000 + "\nsecond line"
    text = text_message(long)
    assert len(text.encode()) <= MAX_BYTES and "\n" not in text and text.endswith("...")
    labels = {f"label{i}.kubevirt.io/key": "v" * 50 for i in range(100)}
    j = json_message("Import Complete", scratch_space_required=False,
                     preallocation_applied=True, labels=labels)
    assert len(j.encode()) <= MAX_BYTES and json.loads(j)["message"] == "Import Complete"
    j = json_message("é" * 5000)
    assert len(j.encode()) <= MAX_BYTES and json.loads(j)["message"].endswith("...")


def test_labels_are_written_in_key_order_as_go_does() -> None:
    msg = json_message("Import Complete", labels={"b.kubevirt.io/x": "1", "a.kubevirt.io/y": "2"})
    assert msg == '{"labels":{"a.kubevirt.io/y":"2","b.kubevirt.io/x":"1"},"message":"Import Complete"}'


# ------------------------------------------------------------------ issue 9: hardening


def test_url_userinfo_is_used_as_basic_auth_like_cdi(pod: Pod, nginx: Nginx, images: Images
                                                     ) -> None:
    url = nginx.url("private/disk.raw").replace("http://", "http://tester:s3cret@")
    code, err = pod.run(IMPORTER_ENDPOINT=url)
    assert code == 0, err
    assert same_disk(images.raw, pod.data / "disk.img")
    assert "s3cret" not in err and "s3cret" not in pod.termination
    code, err = pod.run(IMPORTER_ENDPOINT=url.replace("s3cret", "wrong"))
    assert code == 1 and "401" in pod.termination and "wrong" not in err + pod.termination


def test_extra_header_with_cr_lf_is_refused(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw"),
                      IMPORTER_EXTRA_HEADER_0="X-A: 1\r\nX-Injected: 2")
    assert code == 1
    assert "IMPORTER_EXTRA_HEADER_0" in pod.termination and "Injected" not in pod.termination
    assert not (pod.data / "disk.img").exists()


def test_unreachable_server_says_unable_to_connect(pod: Pod) -> None:
    started = time.monotonic()
    code, err = pod.run(IMPORTER_ENDPOINT=f"http://127.0.0.1:{free_port()}/disk.img")
    assert code == 1 and time.monotonic() - started < 20, err
    assert pod.termination.startswith("Unable to connect to http data source: ")
    assert "connection refused" in pod.termination


def test_404_termination_has_cdis_words(pod: Pod, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("missing.img"))
    assert code == 1
    assert pod.termination.startswith("Unable to connect to http data source: expected status "
                                      "code 200, got 404. Status: 404 Not Found")


@pytest.mark.parametrize(("env", "code", "message"), [
    ({"IMPORTER_SOURCE": "glance"}, 1, "Unknown data source: glance"),
    ({"IMPORTER_CHECKSUM": "md5:xyz"}, 1, "Unable to connect to http data source: invalid "
                                          "checksum: "),
    ({"PREALLOCATION": "maybe"}, 1, "Invalid configuration: PREALLOCATION"),
    ({"IMPORTER_IMAGE_SIZE": "big"}, 2, "Invalid configuration: IMPORTER_IMAGE_SIZE"),
])
def test_configuration_errors_exit_as_cdi_does(pod: Pod, nginx: Nginx, env: dict[str, str],
                                               code: int, message: str) -> None:
    got, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw"), **env)
    assert got == code, err
    assert pod.termination.startswith(message)
    assert "Traceback" not in err


def test_internal_error_still_writes_a_termination_message(
        pod: Pod, nginx: Nginx, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from importer import pod as pod_module

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("a bug")

    for k, v in pod.env(IMPORTER_ENDPOINT=nginx.url("disk.raw")).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(pod_module, "run_import", broken)
    assert pod_module.main([]) == 1
    assert pod.termination == "Unable to process data: internal error: RuntimeError: a bug"
    err = capsys.readouterr().err
    assert all(line.startswith("{") for line in err.splitlines() if line)  # the trace is in JSON


def test_kubevirt_content_with_a_tar_is_written_as_raw_like_cdi(pod: Pod, nginx: Nginx,
                                                                images: Images) -> None:
    import hashlib
    import tarfile

    with tarfile.open(nginx.www / "plain.tar", "w") as tf:
        tf.add(images["tiny.raw"], arcname="tiny.raw")
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("plain.tar"))
    assert code == 0, err
    tar = (nginx.www / "plain.tar").read_bytes()
    disk = (pod.data / "disk.img").read_bytes()
    assert hashlib.md5(disk[: len(tar)]).digest() == hashlib.md5(tar).digest()  # CDI's check
    assert "contentType: archive" in err


def test_cdi_s_pull_method_pod_is_a_pull_by_the_pod(pod: Pod, nginx: Nginx, images: Images
                                                   ) -> None:
    """The controller sets IMPORTER_PULL_METHOD=pod (anything but node is a pod pull in CDI)."""
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), IMPORTER_PULL_METHOD="pod")
    assert code == 0, err
    assert same_disk(pod.data / "disk.img", images.raw)


def test_pod_messages_name_the_pod_s_settings_never_cli_flags(pod: Pod, nginx: Nginx) -> None:
    """What a CDI user can change is the DataVolume's secret or config map, not a flag."""
    for endpoint in (nginx.url("private/disk.qcow2"), nginx.tls_url("disk.qcow2")):
        code, err = pod.run(IMPORTER_ENDPOINT=endpoint)
        assert code == 1, err
        message = pod.termination
        assert "--" not in message, message
        assert "secret" in message or "certConfigMap" in message, message


def test_an_archive_into_a_block_volume_says_so(tmp_path: Path) -> None:
    from .conftest import loop_device

    (tmp_path / "dev").mkdir()
    with loop_device(tmp_path / "backing", 8 << 20, b"\0") as dev:
        (tmp_path / "dev" / "cdi-block-volume").symlink_to(dev)
        p = Pod(tmp_path)
        code, _err = p.run(IMPORTER_ENDPOINT="http://127.0.0.1:9/a.tar",
                           IMPORTER_CONTENTTYPE="archive")
        assert code == 1
        assert "archive needs a filesystem volume" in p.termination, p.termination


def test_an_ova_url_imports_its_disk(pod: Pod, nginx: Nginx, images: Images) -> None:
    """contentType kubevirt and an appliance: its single disk is imported (issue 23); several
    disks are refused in the pod's words, naming them."""
    from .ova_images import OvaDisk, make_ova

    so = images["disk-so.vmdk"]
    work = pod.root / "ova"
    work.mkdir()
    for name, disks in (("pod-one", [OvaDisk(so, SEED_SIZE)]),
                        ("pod-two", [OvaDisk(so, SEED_SIZE), OvaDisk(so, SEED_SIZE)])):
        make_ova(work / f"{name}.ova", name, disks)
        os.replace(work / f"{name}.ova", images.dir / f"{name}.ova")
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("pod-one.ova"))
    assert code == 0, err
    assert same_disk(pod.data / "disk.img", images.raw)
    assert pod.termination.startswith('{"scratchSpaceRequired":false')
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("pod-two.ova"))
    assert code == 1 and "holds 2 disks" in pod.termination, pod.termination
    assert "single-disk appliances only" in pod.termination and "--" not in pod.termination


def test_the_pod_entrypoint_runs_the_cli_for_a_user_who_names_a_command(images: Images,
                                                                       tmp_path: Path) -> None:
    """`podman run IMAGE import SOURCE DEST`: the image's entrypoint is cdi-importer with
    -alsologtostderr; a command after it is the CLI's (issue 24)."""
    done = subprocess.run([sys.executable, "-m", "importer", "pod", "-alsologtostderr", "import",
                           str(images["disk.qcow2"]), str(tmp_path / "d.img"), "-o", "json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "qcow2"
    assert same_disk(images.raw, tmp_path / "d.img")
