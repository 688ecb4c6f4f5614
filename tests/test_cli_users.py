"""The command line for people and CI jobs (issue 14), through the real CLI in a child process:
progress where no terminal watches and a bar where one does (a pseudo-terminal), JSON logs,
inspect reporting unsafe images, the JSON schema's error codes, the options users reach for."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Images, Nginx, importer_cli, same_disk


def test_progress_lines_when_no_terminal_watches(nginx: Nginx, images: Images,
                                                 tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("slow/disk.raw"), tmp_path / "d.img",
                     "--progress-interval", "0.1")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: ")]
    assert len(lines) >= 2, r.stderr
    # what happens in words, the bytes and the rate (CDI's phase names stay in the pod's logs)
    assert "% copying, " in lines[-1] and "MiB/s" in lines[-1], lines
    assert same_disk(tmp_path / "d.img", images.raw)


def test_a_stream_of_unknown_size_has_no_percentage(images: Images, tmp_path: Path) -> None:
    """A pipe has no size: the lines show the bytes and the rate, never a made-up percentage."""
    feeder = (f"import sys, time\ndata = open({str(images.raw)!r}, 'rb').read()\n"
              "for i in range(0, len(data), 1 << 20):\n"
              "    sys.stdout.buffer.write(data[i:i + (1 << 20)]); sys.stdout.flush()\n"
              "    time.sleep(0.05)\n")
    cat = subprocess.Popen([sys.executable, "-c", feeder], stdout=subprocess.PIPE)
    r = importer_cli("import", "-", tmp_path / "d.img", "--progress", "lines",
                     "--progress-interval", "0.1", stdin=cat.stdout)
    cat.wait(30)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: copying")]
    assert lines and all("MiB/s" in ln and "%" not in ln for ln in lines), r.stderr
    assert same_disk(tmp_path / "d.img", images.raw)


def test_json_logs_for_ci(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("slow/disk.raw"), tmp_path / "d.img", "-v",
                     "--log-format", "json", "--progress-interval", "0.1")
    assert r.returncode == 0, r.stderr
    records = [json.loads(ln) for ln in r.stderr.splitlines() if ln.strip()]
    progress = [x for x in records if x["msg"] == "progress"]
    assert progress and {"percent", "bytes_read", "rate_bytes_per_second",
                         "eta_seconds"} <= set(progress[-1])
    assert any("plan" in x["msg"] for x in records)


def test_quiet_prints_nothing_but_errors(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("slow/disk.raw"), tmp_path / "d.img", "-q",
                     "--progress-interval", "0.1")
    assert r.returncode == 0 and r.stderr == ""


def test_a_bar_on_a_terminal(nginx: Nginx, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    # a terminal of 100 columns: on a 0-column one tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "importer", "import",
                          nginx.url("slow/disk.raw"), str(tmp_path / "d.img"),
                          "--connections", "1"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=slave, text=False)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
        elif p.poll() is not None:
            break
    p.wait(30)
    os.close(master)
    assert p.returncode == 0
    assert b"%|" in seen and b"copying" in seen and b"MiB/s" in seen  # tqdm's bar, not lines
    assert b"progress: " not in seen


def test_inspect_reports_an_unsafe_image_and_can_gate(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(1 << 20))
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(overlay)], check=True, capture_output=True)
    r = importer_cli("inspect", overlay, "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["safe"] is False and "backing file" in out["unsafe_reasons"][0]
    assert out["schema_version"] == 1
    assert importer_cli("inspect", overlay, "--fail-unsafe").returncode == 3


def test_inspect_text_is_for_people(nginx: Nginx) -> None:
    r = importer_cli("inspect", nginx.url("disk.qcow2"))
    assert r.returncode == 0, r.stderr
    assert "24.0 MiB (25165824 bytes)" in r.stdout and "safe             yes" in r.stdout
    assert "{" not in r.stdout and "None" not in r.stdout


def test_json_errors_carry_a_stable_code(tmp_path: Path) -> None:
    r = importer_cli("import", "http://127.0.0.1:1/x.img", tmp_path / "d.img", "-o", "json",
                     "--retries", "0")
    assert r.returncode != 0
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1 and out["error"]["code"] == "source-unreachable"
    assert "connection refused" in out["error"]["message"]


def test_options_users_reach_for(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    ca = nginx.ca_dir / "test-ca.pem"
    # global flags before the subcommand, -H, --ca-file
    r = importer_cli("-o", "json", "import", nginx.tls_url("disk.qcow2"), tmp_path / "a.img",
                     "-H", "X-Trace: 1", "--ca-file", ca)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"] == "extents"
    r = importer_cli("import", nginx.tls_url("disk.raw"), tmp_path / "b.img", "-k")
    assert r.returncode == 0, r.stderr
    assert same_disk(tmp_path / "b.img", images.raw)


def test_every_entrypoint_has_version(tmp_path: Path) -> None:
    for exe in ("importer", "cdi-importer", "cdi-uploadserver", "cdi-cloner"):
        r = subprocess.run([str(Path(sys.executable).with_name(exe)), "--version"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "0." in r.stdout, (exe, r.stderr)
    r = importer_cli("pod", "--help")
    assert r.returncode == 0 and "IMPORTER_ENDPOINT" in r.stdout and "IMPORTER_DISK_ID" in r.stdout


def test_sizes_in_decimal_units_are_questioned(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.raw"), tmp_path / "d.img", "--image-size",
                     "30M")
    assert r.returncode == 0, r.stderr
    assert "30M means 30000000 bytes" in r.stderr and "did you mean 30Mi" in r.stderr
    assert (tmp_path / "d.img").stat().st_size % 512 == 0  # rounded up to whole sectors


def test_an_existing_destination_needs_force(nginx: Nginx, images: Images,
                                             tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    dest.write_bytes(b"precious")
    r = importer_cli("import", nginx.url("disk.raw"), dest)
    assert r.returncode == 2 and "exists; give --force" in r.stderr
    assert dest.read_bytes() == b"precious"
    r = importer_cli("import", nginx.url("disk.raw"), dest, "--force")
    assert r.returncode == 0, r.stderr
    assert same_disk(dest, images.raw)


def test_a_device_with_a_file_system_needs_force(nginx: Nginx, images: Images,
                                                 tmp_path: Path) -> None:
    from .conftest import loop_device

    with loop_device(tmp_path / "backing", 32 << 20, b"\0") as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(dev)], check=True, capture_output=True)
        r = importer_cli("import", nginx.url("disk.raw"), dev)
        assert r.returncode == 2 and "holds a file system (ext4)" in r.stderr
        r = importer_cli("import", nginx.url("disk.raw"), dev, "--force")
        assert r.returncode == 0, r.stderr


def test_standard_input_and_output(images: Images, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "importer", "import"]
    # a qcow2 piped in (a pipe: `input=`): converted natively as it streams
    r = subprocess.run([*run, "-", str(tmp_path / "a.img"), "-o", "json"],
                       input=images["disk.qcow2"].read_bytes(), capture_output=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"] == "stream"
    assert same_disk(tmp_path / "a.img", images.raw)
    # a file redirected in can be read at random
    with open(images["disk.qcow2"], "rb") as f:
        r = subprocess.run([*run, "-", str(tmp_path / "r.img"), "-o", "json"], stdin=f,
                           capture_output=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["plan"] == "extents"
    # a vdi piped in must be staged: the reason says why
    r = subprocess.run([*run, "-", str(tmp_path / "b.img"), "-v"],
                       input=images["disk.vdi"].read_bytes(), capture_output=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and b"standard input is a pipe" in r.stderr
    assert same_disk(tmp_path / "b.img", images.raw)
    # raw to standard output, in order; the result goes to stderr
    r = subprocess.run([*run, "-", "-", "-o", "json"], input=images["disk.raw.gz"].read_bytes(),
                       capture_output=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == images.raw.read_bytes()
    assert b'"plan":"stream"' in r.stderr
    # every format to standard output (issue 24): the extent copier writes in the disk's
    # order, qemu-img's formats go through scratch, a pipe or compressed qcow2 is staged
    for name, piped in (("disk.qcow2", False), ("disk-so.vmdk", False), ("disk.vdi", False),
                        ("disk.raw.xz", False), ("disk.qcow2", True), ("disk.qcow2.gz", False),
                        ("disk.vhdx", True)):
        source = images[name].read_bytes() if piped else None
        r = subprocess.run([*run, "-" if piped else str(images[name]), "-", "-o", "json"],
                           input=source, capture_output=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, (name, piped, r.stderr[-600:])
        assert r.stdout == images.raw.read_bytes(), (name, piped)
        if piped or name.endswith(".gz"):
            assert b"staging the image" in r.stderr, (name, r.stderr[-600:])


def test_format_forces_the_input_format(images: Images, tmp_path: Path) -> None:
    # raw: the bytes as they are, even a qcow2's (qemu-img -f raw)
    r = importer_cli("import", images["disk.qcow2"], tmp_path / "a.img", "--format", "raw",
                     "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "raw"
    data = images["disk.qcow2"].read_bytes()
    assert (tmp_path / "a.img").read_bytes()[: len(data)] == data
    # another format must be what the magic says
    r = importer_cli("import", images["disk.qcow2"], tmp_path / "b.img", "--format", "vmdk")
    assert r.returncode == 1 and "--format vmdk, but the data is qcow2" in r.stderr
    r = importer_cli("import", images["disk.qcow2"], tmp_path / "c.img", "--format", "qcow2")
    assert r.returncode == 0 and same_disk(tmp_path / "c.img", images.raw)


def test_zero_bytes_are_counted_after_qemu_img_too(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.vdi"), tmp_path / "d.img", "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["converter"] == "qemu-img" and out["zero_bytes_skipped"] > 0
    assert out["bytes_written"] + out["zero_bytes_skipped"] == out["virtual_size"]
    assert os.stat(tmp_path / "d.img").st_blocks * 512 <= out["bytes_written"] + (1 << 20)


@pytest.mark.parametrize("name", ["disk.raw", "disk.qcow2", "disk-zstd.qcow2", "disk-so.vmdk",
                                  "disk.raw.gz", "disk.raw.xz", "disk.qcow2.xz", "disk.vhdx"])
def test_the_result_counts_what_the_import_needed(nginx: Nginx, images: Images, tmp_path: Path,
                                                  name: str) -> None:
    """On every plan: bytes_read is the source the import needed (each byte once, never more
    than the object), bytes_received also counts re-reads and dropped read-ahead, and the
    written bytes and the skipped zeros make up the disk."""
    r = importer_cli("import", nginx.url(name), tmp_path / "d.img", "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    size = images[name].stat().st_size
    assert 0 < out["bytes_read"] <= size, out
    assert out["bytes_received"] >= out["bytes_read"]
    assert out["bytes_written"] + out["zero_bytes_skipped"] == out["virtual_size"], out
    assert out["zero_bytes_skipped"] > 0


def test_the_readme_documents_every_option() -> None:
    """--help and the README must not drift: every long option of import, inspect and verify
    is in the README, and every command is named there."""
    import argparse

    from importer.cli import _parser

    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert all(f"importer {name}" in readme for name in sub.choices)
    missing = {o for name in ("import", "inspect", "verify") for a in sub.choices[name]._actions
               for o in a.option_strings if o.startswith("--") and o != "--help"
               and o not in readme}
    assert not missing, f"options missing from the README: {sorted(missing)}"


def test_a_resumed_transfer_says_where_it_goes_on(nginx: Nginx, images: Images,
                                                  tmp_path: Path) -> None:
    from .conftest import DroppingProxy

    proxy = DroppingProxy(nginx.port, cut=256 << 10, victims={1, 2, 3})  # any that bring much
    try:
        r = importer_cli("import", f"http://127.0.0.1:{proxy.port}/disk.raw.gz",
                         tmp_path / "d.img")
    finally:
        proxy.close()
    assert r.returncode == 0, r.stderr
    assert "resuming at byte " in r.stderr  # at the default level, no -v needed
    assert same_disk(tmp_path / "d.img", images.raw)
