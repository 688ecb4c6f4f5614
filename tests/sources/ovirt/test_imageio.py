"""oVirt imageio imports against the real imageio daemon and the fake engine: cold imports by
extents (to a file and a loop device) and without them, warm imports in three stages, and the
ways they fail: a backing file that is not the previous checkpoint, a missing target, a locked
disk, a wrong password, TLS, a signal mid-transfer, connections dropped mid-extent, an idle
ticket. Every case checks what the engine saw: one transfer, ended once, the right way."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import inspect_source, run_import
from importer.errors import SourceAuthError, SourceUnavailableError
from importer.sources.imageio import ImageioSource
from importer.sources.options import ImageioOptions
from tests.conftest import (
    ROOT,
    DroppingProxy,
    free_port,
    importer_cli,
    loop_device,
    nginx_process,
    same_disk,
)

from .fixtures import Ovirt
from .servers import FakeEngine

pytestmark = pytest.mark.timeout(180)


def _config(ovirt: Ovirt, dest: Path | None, **options: object) -> object:
    cfg = build_config(source=ovirt.engine.url, dest=str(dest) if dest else "", source_kind="imageio",
                       username=FakeEngine.USER, password=FakeEngine.PASSWORD,
                       ca_dir=str(ovirt.pki.ca_dir), disk_id=str(options.pop("disk_id")),
                       checkpoint=options.pop("checkpoint", None),  # type: ignore[arg-type]
                       previous_checkpoint=options.pop("previous", None))  # type: ignore[arg-type]
    assert isinstance(cfg.options, ImageioOptions)
    return dataclasses.replace(cfg, options=dataclasses.replace(cfg.options, **options))


def _ended_once(ovirt: Ovirt, how: str) -> None:
    """One transfer was created, and it received `how` (finalize or cancel) once, nothing else."""
    e = ovirt.engine
    assert len(e.transfers) == 1, e.calls
    other = "cancel" if how == "finalize" else "finalize"
    assert len(e.actions(how)) == 1 and not e.actions(other), e.calls
    t = next(iter(e.transfers.values()))
    status, _ = ovirt.daemon.control_call("GET", f"/tickets/{t.ticket}")
    assert status == 404  # the ticket is gone: the disk is not left locked


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ cold


def test_cold_import_copies_data_extents_and_keeps_holes(ovirt: Ovirt, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    r = importer_cli("import", *ovirt.cli_args("--disk-id", ovirt.cold.id), str(dest),
                     "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["plan"] == "ranges" and "map of data and zero extents" in result["plan_reason"]
    assert same_disk(dest, ovirt.cold_image)
    # only data extents travelled (7 MiB of data, 2 MiB of zeros written as data: the map
    # calls them allocated), not the 55 MiB of holes; the written zeros became holes here
    assert result["bytes_read"] <= 10 << 20, result
    assert _allocated(dest) <= 8 << 20
    _ended_once(ovirt, "finalize")
    # one transfer, polled until ready: CDI's re-POST loop would show several POSTs
    assert ovirt.engine.calls.count("POST /ovirt-engine/api/imagetransfers") == 1
    assert FakeEngine.PASSWORD not in r.stderr + r.stdout
    assert next(iter(ovirt.engine.transfers.values())).ticket not in r.stderr  # a secret URL


def test_cold_import_onto_a_block_device(ovirt: Ovirt, tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", ovirt.cold.size, b"\xa5") as dev:
        r = importer_cli("import", *ovirt.cli_args("--disk-id", ovirt.cold.id), str(dev))
        assert r.returncode == 0, r.stderr
        assert same_disk(dev, ovirt.cold_image)  # the old 0xa5 is zeroed in every zero extent
    _ended_once(ovirt, "finalize")


def test_a_server_without_extents_is_read_in_ranges(ovirt: Ovirt, tmp_path: Path) -> None:
    """An imageio proxy of old (or any HTTPS server) answers OPTIONS with 405: no map, the image
    is read whole. A real nginx serves the disk at every /images/ path."""
    www = tmp_path / "www"
    www.mkdir()
    os.link(ovirt.cold_image, www / "cold.raw")
    port = free_port()
    servers = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {ovirt.pki.server_pem};
        ssl_certificate_key {ovirt.pki.server_key};
        root {www};
        location /images/ {{ try_files /cold.raw =404; }}
    }}"""
    with nginx_process(tmp_path, servers, port):
        ovirt.engine.transfer_base = f"https://127.0.0.1:{port}"
        result = run_import(_config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id))  # type: ignore[arg-type]
    assert "map of data and zero extents" not in result.plan_reason
    assert ovirt.cold.size <= result.bytes_read <= ovirt.cold.size + (64 << 10)  # + the head
    assert same_disk(tmp_path / "d.img", ovirt.cold_image)
    _ended_once(ovirt, "finalize")


def test_inspect_reports_the_plan_and_cancels_the_transfer(ovirt: Ovirt) -> None:
    info = inspect_source(_config(ovirt, None, disk_id=ovirt.cold.id))  # type: ignore[arg-type]
    assert info["plan"] == "ranges" and info["virtual_size"] == ovirt.cold.size
    _ended_once(ovirt, "cancel")


# ------------------------------------------------------------------------------ warm


def test_warm_import_in_three_stages_equals_each_snapshot(ovirt: Ovirt, tmp_path: Path) -> None:
    chain = ovirt.warm
    dest = tmp_path / "disk.img"
    previous: str | None = None
    for stage, (checkpoint, expected) in enumerate(zip(chain.snapshots, chain.expected,
                                                       strict=True)):
        ovirt.engine.transfers.clear()
        args = ["--disk-id", chain.disk.id, "--checkpoint", checkpoint]
        if previous:
            args += ["--previous-checkpoint", previous]
        r = importer_cli("import", *ovirt.cli_args(*args), str(dest), "-o", "json")
        assert r.returncode == 0, f"stage {stage + 1}: {r.stderr}"
        result = json.loads(r.stdout)
        assert same_disk(dest, expected), f"stage {stage + 1} differs from its snapshot"
        _ended_once(ovirt, "finalize")
        t = next(iter(ovirt.engine.transfers.values()))
        if previous is None:
            assert result["plan"] == "ranges" and t.fmt == "raw"
        else:
            # the delta volume is read, never the whole disk; nothing is staged or converted
            assert result["plan"] == "delta" and t.fmt == "cow"
            volume = chain.dir / checkpoint
            assert result["bytes_read"] <= volume.stat().st_size
            assert result["staged_bytes"] == 0 and result["converter"] == "native"
        previous = checkpoint
    assert dest.stat().st_size == chain.disk.size


def test_a_delta_on_another_checkpoint_is_refused_untouched(ovirt: Ovirt, tmp_path: Path
                                                            ) -> None:
    chain = ovirt.warm
    dest = tmp_path / "disk.img"
    dest.write_bytes(chain.expected[0].read_bytes())
    before = _digest(dest)
    r = importer_cli("import", *ovirt.cli_args(
        "--disk-id", chain.disk.id, "--checkpoint", chain.snapshots[2],
        "--previous-checkpoint", chain.snapshots[0]), str(dest))
    assert r.returncode == 1
    assert (f"snapshot backing file '{chain.snapshots[1]}' does not match expected checkpoint "
            f"'{chain.snapshots[0]}', unable to safely rebase snapshot") in r.stderr
    assert "Traceback" not in r.stderr
    assert _digest(dest) == before
    _ended_once(ovirt, "cancel")


def test_a_delta_needs_the_previous_stage_s_disk(ovirt: Ovirt, tmp_path: Path) -> None:
    chain = ovirt.warm
    r = importer_cli("import", *ovirt.cli_args(
        "--disk-id", chain.disk.id, "--checkpoint", chain.snapshots[1],
        "--previous-checkpoint", chain.snapshots[0]), str(tmp_path / "missing.img"))
    assert r.returncode == 1
    assert "Disk image does not exist, cannot apply deltas for warm migration" in r.stderr
    assert not (tmp_path / "missing.img").exists()
    _ended_once(ovirt, "cancel")


def test_an_unknown_checkpoint_is_named(ovirt: Ovirt, tmp_path: Path) -> None:
    r = importer_cli("import", *ovirt.cli_args("--disk-id", ovirt.warm.disk.id, "--checkpoint",
                                               "no-such-snapshot"), str(tmp_path / "d.img"))
    assert r.returncode == 1 and "snapshot no-such-snapshot not found" in r.stderr
    assert not ovirt.engine.transfers


# ------------------------------------------------------------------------------ failures


def test_a_locked_disk_is_waited_for(ovirt: Ovirt, tmp_path: Path) -> None:
    ovirt.engine.locked_posts = 2
    result = run_import(_config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id,  # type: ignore[arg-type]
                                locked_retry=0.2))
    assert result.plan == "ranges"
    assert ovirt.engine.calls.count("POST /ovirt-engine/api/imagetransfers") == 3
    _ended_once(ovirt, "finalize")


def test_a_disk_that_stays_locked_fails_in_bounded_time(ovirt: Ovirt, tmp_path: Path) -> None:
    ovirt.engine.locked_posts = 1000
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="locked") as err:
        run_import(_config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id,  # type: ignore[arg-type]
                           locked_retry=0.2, locked_wait=1.0))
    assert time.monotonic() - started < 10
    assert err.value.transient or isinstance(err.value, SourceUnavailableError)
    assert not ovirt.engine.transfers and not (tmp_path / "d.img").exists()


def test_a_wrong_password_is_a_clear_auth_error(ovirt: Ovirt, tmp_path: Path) -> None:
    bad = tmp_path / "pw"
    bad.write_text("wrong\n")
    args = ovirt.cli_args("--disk-id", ovirt.cold.id)
    args[args.index("--password-file") + 1] = str(bad)
    r = importer_cli("import", *args, str(tmp_path / "d.img"))
    assert r.returncode == 1 and "refused the login of 'admin@internal'" in r.stderr
    assert "Traceback" not in r.stderr and "wrong" not in r.stderr.replace("went wrong", "")
    assert not ovirt.engine.transfers


def test_tls_needs_the_ca_or_insecure(ovirt: Ovirt, tmp_path: Path) -> None:
    args = ovirt.cli_args("--disk-id", ovirt.cold.id)
    i = args.index("--ca-dir")
    no_ca = args[:i] + args[i + 2:]
    r = importer_cli("import", *no_ca, str(tmp_path / "a.img"))
    assert r.returncode == 1 and "TLS verification failed" in r.stderr
    r = importer_cli("import", *no_ca, "--insecure", str(tmp_path / "b.img"))
    assert r.returncode == 0, r.stderr
    assert same_disk(tmp_path / "b.img", ovirt.cold_image)


def test_an_expired_token_is_renewed_once(ovirt: Ovirt, tmp_path: Path) -> None:
    ovirt.engine.expire_tokens = 1
    run_import(_config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id))  # type: ignore[arg-type]
    assert ovirt.engine.calls.count("POST /ovirt-engine/sso/oauth/token") == 2
    _ended_once(ovirt, "finalize")


def test_connections_dropped_mid_extent_are_resumed(ovirt: Ovirt, tmp_path: Path) -> None:
    proxy = DroppingProxy(ovirt.daemon.port, cut=300_000, victims={3, 4, 6})
    try:
        ovirt.engine.transfer_base = f"https://127.0.0.1:{proxy.port}"
        result = run_import(_config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id))  # type: ignore[arg-type]
    finally:
        proxy.close()
    assert proxy.count > 5  # the dropped connections were replaced
    assert result.plan == "ranges"
    assert same_disk(tmp_path / "d.img", ovirt.cold_image)
    _ended_once(ovirt, "finalize")


def test_sigterm_mid_transfer_cancels_the_transfer(ovirt: Ovirt, tmp_path: Path) -> None:
    proxy = DroppingProxy(ovirt.daemon.port, cut=1 << 40, victims=set(), rate=256 << 10)
    dest = tmp_path / "d.img"
    try:
        ovirt.engine.transfer_base = f"https://127.0.0.1:{proxy.port}"
        p = subprocess.Popen([sys.executable, "-m", "importer", "import",
                              *ovirt.cli_args("--disk-id", ovirt.cold.id), str(dest)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not any(t.phase == "transferring" for t in ovirt.engine.transfers.values()):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # data is flowing, slowly
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        proxy.close()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not dest.exists() and not Path(str(dest) + ".partial").exists()
    _ended_once(ovirt, "cancel")


def test_an_idle_ticket_is_kept_alive(ovirt: Ovirt, tmp_path: Path) -> None:
    """The daemon expires a ticket `timeout` seconds after its last operation; an import busy
    elsewhere (a slow target) renews it. The control shows the test can fail."""
    ovirt.engine.ticket_timeout, ovirt.engine.init_polls = 3, 1
    for renew_after, survives in ((0.5, True), (60.0, False)):
        cfg = _config(ovirt, tmp_path / "d.img", disk_id=ovirt.cold.id, renew_after=renew_after)
        src = ImageioSource(cfg)  # type: ignore[arg-type]
        try:
            time.sleep(5)
            if survives:
                assert len(src.read_at(1 << 20, 4096)) == 4096
            else:
                with pytest.raises(SourceAuthError, match="refused the transfer ticket"):
                    src.read_at(1 << 20, 4096)
        finally:
            src.end(False)
            src.close()
    assert ovirt.engine.actions("extend")


def test_the_pod_imports_an_ovirt_disk(ovirt: Ovirt, tmp_path: Path) -> None:
    from tests.test_pod import Pod

    (tmp_path / "data").mkdir()
    (tmp_path / "dev").mkdir()
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(ovirt.pki.ca_file.read_bytes())
    pod = Pod(tmp_path)
    env = {"IMPORTER_SOURCE": "imageio", "IMPORTER_ENDPOINT": ovirt.engine.url,
           "IMPORTER_ACCESS_KEY_ID": FakeEngine.USER, "IMPORTER_SECRET_KEY": FakeEngine.PASSWORD,
           "IMPORTER_CERT_DIR": "/certs", "IMPORTER_IMAGE_SIZE": "64Mi"}
    chain = ovirt.warm
    code, err = pod.run(**env, IMPORTER_DISK_ID=chain.disk.id,
                        IMPORTER_CURRENT_CHECKPOINT=chain.snapshots[0])
    assert code == 0, err
    assert json.loads(pod.termination)["message"] == "Import Complete"
    assert same_disk(pod.data / "disk.img", chain.expected[0])
    assert FakeEngine.PASSWORD not in err
    # the next stage applies its delta onto the disk the first one wrote
    code, err = pod.run(**env, IMPORTER_DISK_ID=chain.disk.id,
                        IMPORTER_CURRENT_CHECKPOINT=chain.snapshots[1],
                        IMPORTER_PREVIOUS_CHECKPOINT=chain.snapshots[0])
    assert code == 0, err
    assert same_disk(pod.data / "disk.img", chain.expected[1])
    assert len(ovirt.engine.actions("finalize")) == 2 and not ovirt.engine.actions("cancel")
    # an unknown disk: CDI's prefix, exit 1
    code, err = pod.run(**env, IMPORTER_DISK_ID="no-such-disk")
    assert code == 1
    assert pod.termination.startswith("Unable to connect to imageio data source: disk "
                                      "no-such-disk not found")


def test_missing_disk_id_is_a_configuration_error(ovirt: Ovirt, tmp_path: Path) -> None:
    r = importer_cli("import", *ovirt.cli_args(), str(tmp_path / "d.img"))
    assert r.returncode == 2 and "--disk-id is needed" in r.stderr
    r = importer_cli("import", *ovirt.cli_args("--disk-id", "x", "--previous-checkpoint", "s"),
                     str(tmp_path / "d.img"))
    assert r.returncode == 2 and "previous checkpoint set without current" in r.stderr


def test_a_guest_disk_is_copied_as_it_is_whatever_it_holds(ovirt: Ovirt, tmp_path: Path
                                                             ) -> None:
    """A raw transfer is the guest's disk: one that holds a qcow2 file's bytes at its start
    and a VHD footer at its end is still copied byte for byte, never converted or cut."""
    from .servers import Disk, Volume, new_id, qemu

    work = tmp_path / "vol"
    work.mkdir()
    inner = work / "inner.qcow2"
    qemu("create", "-f", "qcow2", inner, "16M")
    vol = Volume(new_id(), work / "guest.raw", "raw")
    data = bytearray(inner.read_bytes().ljust(8 << 20, b"\0"))
    data[-512:] = b"conectix" + bytes(504)  # a fixed VHD footer's cookie in the last sector
    vol.path.write_bytes(bytes(data))
    disk = ovirt.engine.add_disk(Disk(new_id(), len(data), [vol], name="odd"))
    try:
        for connections in ("4", "1"):  # the ranges plan, and the stream plan
            dest = tmp_path / f"d{connections}.img"
            r = importer_cli("import", *ovirt.cli_args("--disk-id", disk.id), str(dest),
                             "--connections", connections, "-o", "json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["format"] == "raw"
            assert dest.read_bytes() == bytes(data)
    finally:
        del ovirt.engine.disks[disk.id]
