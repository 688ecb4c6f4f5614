"""Host-assisted clone end to end: the real cdi-cloner (a child process with CDI's environment)
sending to the real upload server over mTLS, block and filesystem volumes, file and loop-device
targets; and a body framed by an independent Snappy encoder (cramjam's), to hold our decoder to
the format rather than to our encoder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cramjam
import pytest

from tests.conftest import ROOT, Images, loop_device, same_disk
from tests.uploadserver.servers import Certs, UploadPod, make_certs

pytestmark = pytest.mark.timeout(180)
CLONE_NAME = "ns/src-ns/tgt"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("clone-certs"))


@pytest.fixture
def target(tmp_path: Path, certs: Certs) -> Iterator[UploadPod]:
    root = tmp_path / "target"
    for d in ("data", "dev"):
        (root / d).mkdir(parents=True)
    p = UploadPod(root, certs)
    yield p
    p.stop()


def _clone(target: UploadPod, tmp_path: Path, content_type: str, mount: Path,
           **env: str) -> tuple[int, str, Path]:
    root = tmp_path / "source"
    (root / "dev").mkdir(parents=True, exist_ok=True)
    c = target.certs
    base = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(root),
            "CLIENT_CERT": c.clone[0].read_text(), "CLIENT_KEY": c.clone[1].read_text(),
            "SERVER_CA_CERT": c.ca.read_text(), "UPLOAD_URL": target.url("/v1beta1/upload"),
            "OWNER_UID": "uid-7", "PREALLOCATION": "false", "CLONER_METRICS_PORT": "0", **env}
    r = subprocess.run([sys.executable, "-m", "importer.cloner", "-v=3", "-alsologtostderr",
                        "-content-type", content_type, "-mount", str(mount)], cwd=ROOT,
                       env=base, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr, root / "dev" / "termination-log"


def test_block_clone_to_a_file(target: UploadPod, tmp_path: Path, images: Images) -> None:
    target.start(CLIENT_NAME=CLONE_NAME)
    code, err, term = _clone(target, tmp_path, "blockdevice-clone", images["disk.raw"])
    assert code == 0, err
    assert term.read_text() == "Clone Complete"
    rc, server_err = target.wait()
    assert rc == 0, server_err
    assert target.message() == {"preallocationApplied": False, "message": "Clone Complete"}
    assert same_disk(target.data / "disk.img", images["disk.raw"])
    data = os.stat(images["disk.raw"]).st_blocks * 512
    assert os.stat(target.data / "disk.img").st_blocks * 512 <= data + (1 << 20)  # sparse


def test_filesystem_clone_to_a_filesystem(target: UploadPod, tmp_path: Path,
                                          images: Images) -> None:
    src = tmp_path / "volume"
    (src / "lost+found").mkdir(parents=True)
    (src / "lost+found" / "junk").write_text("not cloned")
    subprocess.run(["cp", "--sparse=always", str(images["disk.raw"]), str(src / "disk.img")],
                   check=True)
    (src / "notes.txt").write_text("kept\n")
    (src / "notes.txt").chmod(0o600)
    target.start(CLIENT_NAME=CLONE_NAME)
    code, err, _ = _clone(target, tmp_path, "filesystem-clone", src)
    assert code == 0, err
    assert target.wait()[0] == 0
    assert target.message()["message"] == "Clone Complete"
    assert same_disk(target.data / "disk.img", images["disk.raw"])
    assert (target.data / "notes.txt").read_text() == "kept\n"
    assert (target.data / "notes.txt").stat().st_mode & 0o777 == 0o600
    assert not (target.data / "lost+found" / "junk").exists()


def test_filesystem_clone_keeps_links_modes_and_preallocates_when_asked(
        target: UploadPod, tmp_path: Path) -> None:
    """As GNU tar --preserve-permissions --no-same-owner does for CDI: symbolic links created
    (never followed), hard links kept, directory modes kept; with preallocation the files are
    allocated (the cloner drops -S) and "preallocationApplied" says so."""
    src = tmp_path / "volume"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / "app.ini").write_text("a=1\n")
    (src / "conf").chmod(0o750)
    (src / "current").symlink_to("conf/app.ini")
    (src / "etc-link").symlink_to("/etc/hostname")
    os.link(src / "conf" / "app.ini", src / "app.hard")
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(8 << 20)
        f.write(b"head")
    target.start(CLIENT_NAME=CLONE_NAME, PREALLOCATION="true")
    code, err, _ = _clone(target, tmp_path, "filesystem-clone", src, PREALLOCATION="true")
    assert code == 0, err
    assert target.wait()[0] == 0
    assert target.message() == {"preallocationApplied": True, "message": "Clone Complete"}
    d = target.data
    assert os.readlink(d / "current") == "conf/app.ini" and (d / "current").read_text() == "a=1\n"
    assert os.readlink(d / "etc-link") == "/etc/hostname"
    assert os.stat(d / "app.hard").st_ino == os.stat(d / "conf" / "app.ini").st_ino
    assert (d / "conf").stat().st_mode & 0o777 == 0o750
    assert os.stat(d / "sparse.bin").st_blocks * 512 >= 8 << 20  # allocated, not a hole


def test_filesystem_clone_into_a_block_device(target: UploadPod, tmp_path: Path,
                                              images: Images) -> None:
    src = tmp_path / "volume"
    src.mkdir()
    subprocess.run(["cp", "--sparse=always", str(images["disk.raw"]), str(src / "disk.img")],
                   check=True)
    with loop_device(tmp_path / "backing", 64 << 20, b"\x77") as dev:
        (target.root / "dev" / "cdi-block-volume").symlink_to(dev)
        target.start(CLIENT_NAME=CLONE_NAME, DESTINATION="/dev/cdi-block-volume")
        code, err, _ = _clone(target, tmp_path, "filesystem-clone", src)
        assert code == 0, err
        assert target.wait()[0] == 0
        size = images["disk.raw"].stat().st_size
        with open(dev, "rb") as f:
            assert f.read(size) == images["disk.raw"].read_bytes()


def test_an_independent_snappy_encoder_is_understood(target: UploadPod, tmp_path: Path,
                                                     images: Images) -> None:
    framed = tmp_path / "body.sz"
    framed.write_bytes(bytes(cramjam.snappy.compress(images["disk.raw"].read_bytes())))
    target.start(CLIENT_NAME=CLONE_NAME)
    code, body = target.curl("/v1beta1/upload", "-T", str(framed), "-H",
                             "x-cdi-content-type: blockdevice-clone", cert=target.certs.clone)
    assert code == 200, body
    assert target.wait()[0] == 0
    assert same_disk(target.data / "disk.img", images["disk.raw"])


def test_a_corrupt_clone_stream_is_refused_and_the_server_stays(target: UploadPod,
                                                                tmp_path: Path) -> None:
    good = bytearray(cramjam.snappy.compress(os.urandom(200000)))
    good[40] ^= 0xFF  # inside the first chunk: its CRC no longer matches
    bad = tmp_path / "bad.sz"
    bad.write_bytes(bytes(good))
    target.start(CLIENT_NAME=CLONE_NAME)
    code, body = target.curl("/v1beta1/upload", "-T", str(bad), "-H",
                             "x-cdi-content-type: blockdevice-clone", cert=target.certs.clone)
    assert code == 500 and "Saving stream failed" in body
    assert target.proc is not None and target.proc.poll() is None


def test_the_cloner_fails_clearly_against_a_refusing_server(target: UploadPod,
                                                            tmp_path: Path,
                                                            images: Images) -> None:
    target.start()  # expects the upload proxy's CN, not the clone's: 401
    code, err, term = _clone(target, tmp_path, "blockdevice-clone", images["disk.raw"])
    assert code == 255
    assert "401" in term.read_text() and "Traceback" not in err


def test_clone_progress_is_scraped_as_cdi_does(target: UploadPod, tmp_path: Path,
                                               images: Images) -> None:
    """kubevirt_cdi_clone_progress_total rises while a (slowed) clone runs, read with the
    controller's regex; a TLS-passing proxy holds the stream to 2 MiB/s."""
    import re

    import httpx

    from tests.conftest import DroppingProxy, free_port

    target.start(CLIENT_NAME=CLONE_NAME)
    proxy = DroppingProxy(target.port, cut=1 << 40, victims=set(), rate_up=2 << 20)
    port = free_port()
    root = tmp_path / "source"
    (root / "dev").mkdir(parents=True)
    c = target.certs
    env = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(root),
           "CLIENT_CERT": c.clone[0].read_text(), "CLIENT_KEY": c.clone[1].read_text(),
           "SERVER_CA_CERT": c.ca.read_text(),
           "UPLOAD_URL": f"https://127.0.0.1:{proxy.port}/v1beta1/upload", "OWNER_UID": "uid-8",
           "PREALLOCATION": "false", "CLONER_METRICS_PORT": str(port)}
    noisy = tmp_path / "noisy.raw"
    noisy.write_bytes(os.urandom(12 << 20))  # incompressible: the rate holds the clone back
    proc = subprocess.Popen([sys.executable, "-m", "importer.cloner", "-content-type",
                             "blockdevice-clone", "-mount", str(noisy)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    seen: list[float] = []
    pattern = re.compile(r'kubevirt_cdi_clone_progress_total\{ownerUID="uid-8"\} (\d{1,3}\.?\d*)')
    try:
        with httpx.Client(verify=False, timeout=2) as client:
            while proc.poll() is None:
                try:
                    m = pattern.search(client.get(f"https://127.0.0.1:{port}/metrics").text)
                except httpx.HTTPError:
                    m = None
                if m:
                    seen.append(float(m.group(1)))
                time.sleep(0.2)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proxy.close()
    assert len({round(v) for v in seen}) >= 3, seen  # it moved while the clone ran
    assert seen == sorted(seen) and 0 < seen[-1] <= 100


def test_tar_stops_when_its_reader_stops_early(tmp_path: Path) -> None:
    """A failed upload stops reading the tar: the child is killed, not left blocked on its pipe,
    and it runs with the children's minimal environment (no secrets of ours)."""
    from importer.cloner import _tar_blocks
    from importer.progress import Progress

    src = tmp_path / "volume"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 << 20))
    os.environ["IMPORTER_TEST_SECRET"] = "must-not-reach-tar"
    try:
        blocks = _tar_blocks(src, False, Progress())
        next(blocks)
        tars = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _parent(p) == os.getpid() and b"tar" in _cmdline(p)]
        assert tars, "tar should be running"
        environ = (tars[0] / "environ").read_bytes()
        assert b"IMPORTER_TEST_SECRET" not in environ
        blocks.close()
        assert not (tars[0] / "status").exists() or b"Z" in _state(tars[0])
    finally:
        del os.environ["IMPORTER_TEST_SECRET"]


def _parent(p: Path) -> int:
    try:
        return int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def _state(p: Path) -> bytes:
    try:
        return (p / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"
