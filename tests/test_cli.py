"""The command line as a user and a script meet it: exit codes, one-line errors, JSON, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, SEED_SIZE, Images, Nginx, importer_cli, same_disk


def test_import_json_result(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "d.img", "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "qcow2" and out["path"] == "extents" and out["virtual_size"] == SEED_SIZE
    assert {"bytes_read", "bytes_written", "zero_bytes_skipped", "duration_seconds"} <= set(out)
    assert same_disk(images.raw, tmp_path / "d.img")


def test_text_result_and_klog_flags(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.raw.gz"), tmp_path / "d.img", "-v=3",
                     "--image-size", "32Mi")
    assert r.returncode == 0, r.stderr
    assert "imported raw (gzip)" in r.stdout and "by the stream plan" in r.stdout
    assert "Successfully completed fsync" in r.stderr  # what CDI's functional tests grep


def test_inspect_command(nginx: Nginx) -> None:
    r = importer_cli("inspect", nginx.url("disk.vdi"), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "vdi"


def test_failure_is_one_actionable_line(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("nope.qcow2"), tmp_path / "d.img")
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("importer:")]
    assert len(lines) == 1 and "404" in lines[0] and "check the URL" in lines[0]
    assert "Traceback" not in r.stderr


def test_configuration_errors_exit_2_and_list_every_problem(tmp_path: Path) -> None:
    r = importer_cli("import", "ftp://x/y", tmp_path / "missing-dir" / "d.img", "--image-size",
                     "ten", "--checksum", "sha256:zz")
    assert r.returncode == 2
    for needle in ("unsupported scheme", "--image-size", "--checksum", "does not exist"):
        assert needle in r.stderr
    assert "Traceback" not in r.stderr
    r = importer_cli("import")  # argparse usage error
    assert r.returncode == 2


def test_credentials_in_url_are_refused(tmp_path: Path) -> None:
    r = importer_cli("import", "http://user:pw@127.0.0.1:1/x", tmp_path / "d.img")
    assert r.returncode == 2 and "--password-file" in r.stderr
    assert "pw@" not in r.stderr


def test_password_never_logged(nginx: Nginx, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    r = importer_cli("import", nginx.url("private/disk.raw"), tmp_path / "d.img", "--username",
                     "tester", "--password-file", pw, "-vv")
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stderr + r.stdout
    assert "czNjcmV0" not in r.stderr  # nor its base64 form


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "importer", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_file(p: subprocess.Popen[str], path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if path.exists():
            return
        time.sleep(0.05)
    p.kill()
    raise AssertionError(f"{path} never started: {p.communicate()[1][-2000:]}")


def test_sigterm_mid_import_exits_143_and_cleans_up(nginx: Nginx, tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    p = _start(["import", nginx.url("crawl/disk.raw"), str(dest)])
    _wait_for_file(p, tmp_path / "d.img.partial")
    time.sleep(0.3)  # mid-transfer: at 256 KiB/s per connection the image takes ~20 s
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert "stopped by SIGTERM" in err and "imported" not in out
    assert list(tmp_path.iterdir()) == []


def test_sigterm_mid_native_qcow2_copy_stops_at_once(nginx: Nginx, tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    p = _start(["import", nginx.url("crawl/disk.qcow2"), str(dest)])
    _wait_for_file(p, tmp_path / "d.img.partial")
    time.sleep(0.3)  # the extent copier's workers are in slow range reads
    started = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert time.monotonic() - started < 5  # not waiting out the 8 MiB reads at 256 KiB/s
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_conversion_stops_qemu_img(nginx: Nginx, tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    p = _start(["import", nginx.url("crawl/disk.qcow2"), str(dest), "--converter", "qemu-img"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until qemu-img runs (info, then convert)
        ps = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True)
        if ps.returncode == 0:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("qemu-img never started")
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    time.sleep(0.2)
    assert list(tmp_path.iterdir()) == []
    ps = subprocess.run(["pgrep", "-f", "qemu-img.*importer-nbd"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # no qemu-img left behind


def test_image_size_beyond_any_file_is_a_usage_error_at_once(nginx: Nginx, tmp_path: Path
                                                             ) -> None:
    # issue 9 item 8: it crashed with OverflowError after the whole download
    r = importer_cli("import", nginx.url("disk.raw.gz"), tmp_path / "d.img", "--image-size",
                     "16Ei")
    assert r.returncode == 2 and "larger than any file" in r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["slow/disk.raw.gz", "slow/disk.qcow2"])
def test_image_size_beyond_the_file_system_fails_before_the_download(nginx: Nginx,
                                                                     tmp_path: Path, name: str
                                                                     ) -> None:
    # ext4 holds at most 16 TiB in a file: known at start, not after the copy or conversion
    r = importer_cli("import", nginx.url(name), tmp_path / "d.img", "--image-size", "1Ei",
                     timeout=30)
    assert r.returncode == 1 and "cannot hold a file that large" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_every_json_outcome_is_one_line_the_schema_accepts(nginx: Nginx, images: Images,
                                                           tmp_path: Path) -> None:
    """docs/result.schema.json against real outputs (issue 24): an import, inspect of a safe
    and of an unsafe image (the same keys, format and size known), an error, a usage error."""
    import jsonschema

    schema = json.loads((ROOT / "docs" / "result.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    unsafe = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(images["disk.qcow2"]),
                    "-F", "qcow2", str(unsafe)], check=True)
    runs = {
        "import": importer_cli("import", "-o", "json", nginx.url("disk.qcow2"),
                               tmp_path / "d.img"),
        "inspect": importer_cli("inspect", "-o", "json", nginx.url("disk.qcow2")),
        "unsafe": importer_cli("inspect", "-o", "json", unsafe),
        "error": importer_cli("import", "-o", "json", nginx.url("missing.qcow2"),
                              tmp_path / "e.img"),
        "usage": importer_cli("import", "-o", "json", "--no-such-flag"),
        "missing": importer_cli("-o", "json", "import"),
        "verify": importer_cli("verify", "-o", "json", nginx.url("disk.qcow2"),
                               tmp_path / "d.img"),
    }
    docs = {}
    for name, r in runs.items():
        lines = r.stdout.splitlines()
        assert len(lines) == 1, (name, r.stdout, r.stderr)
        docs[name] = json.loads(lines[0])
        jsonschema.validate(docs[name], schema)
    assert set(docs["unsafe"]) == set(docs["inspect"])
    assert docs["unsafe"]["safe"] is False and docs["unsafe"]["format"] == "qcow2"
    assert docs["unsafe"]["virtual_size"] == SEED_SIZE
    assert docs["usage"]["error"]["code"] == "usage" and runs["usage"].returncode == 2
    assert docs["missing"]["error"]["code"] == "usage"
    assert docs["error"]["error"]["code"] != "usage" and runs["error"].returncode != 0
    assert docs["verify"]["identical"] is True


def test_quiet_prints_nothing_on_success_and_warnings_read_as_unix_tools_write_them(
        nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", "-q", nginx.url("disk.qcow2"), tmp_path / "d.img")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    # a warning (the HTML content type) as `importer: warning: ...`, said once
    r = importer_cli("inspect", nginx.url("page.html"))
    warnings = [line for line in r.stderr.splitlines() if "Unexpected content type" in line]
    assert len(warnings) == 1 and warnings[0].startswith("importer: warning: "), r.stderr


def test_f_is_the_format_as_in_qemu_img(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    r = importer_cli("import", "-f", "qcow2", images["disk.qcow2"], tmp_path / "d.img")
    assert r.returncode == 0, r.stderr
    r = importer_cli("import", "-f", "vdi", images["disk.qcow2"], tmp_path / "e.img")
    assert r.returncode != 0 and not (tmp_path / "e.img").exists()
    # replacing takes the long --force
    r = importer_cli("import", "-f", "qcow2", images["disk.qcow2"], tmp_path / "d.img")
    assert r.returncode != 0 and "--force" in r.stderr
    r = importer_cli("import", "--force", images["disk.qcow2"], tmp_path / "d.img")
    assert r.returncode == 0, r.stderr


def test_inspect_reports_sizes_as_qemu_img_does(images: Images) -> None:
    """allocated_size as `qemu-img info` "disk size", required_size as `qemu-img measure -O
    raw` "required size" (issue 24 item 7)."""
    r = importer_cli("inspect", "-o", "json", images["disk.qcow2"])
    info = json.loads(r.stdout)
    measure = subprocess.run(["qemu-img", "measure", "-O", "raw", "-f", "qcow2",
                              str(images["disk.qcow2"])], capture_output=True, text=True,
                             check=True).stdout
    required = int(measure.split("required size:")[1].split()[0])
    assert info["required_size"] == required
    assert info["allocated_size"] == images["disk.qcow2"].stat().st_blocks * 512
    assert "etag" in info
