"""Benchmark: oVirt imageio imports against oVirt's own client and CDI's delta method, same
daemon, same run.

Rows (issue 11):
* cold      `importer import --source imageio` of the bench disk (raw, 1 or 4 GiB virtual) vs
            `ovirt-img download-disk -f raw` (oVirt's own tool: imageio client + qemu-nbd),
            both through the same fake engine and the real imageio daemon; goal <= 0.8;
* delta     one warm stage whose snapshot changed 5 % of the disk: ours applies the qcow2 delta
            onto the disk in place vs CDI's method (create the transfer, download the delta to
            scratch, `qemu-img rebase -u` onto the disk, `qemu-img commit`); goal <= 0.3.

No oVirt engine can run on this machine: the engine is the tests' fake (tests/sources/ovirt,
checked against the real ovirtsdk4); the daemon, qemu-nbd, ovirt-img and qemu-img are real.

    .venv/bin/python bench/bench_imageio.py [--size 1g|4g] [--repeat N] [--pod-limits]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_bench import (  # noqa: E402
    SIZES,
    GiB,
    Measure,
    MiB,
    PodLimits,
    best_of,
    make_disk,
    print_ratios,
)
from tests.sources.ovirt.servers import Disk, Volume, new_id, ovirt_world, qemu  # noqa: E402

DELTA_SCRIPT = '''
import subprocess, sys, time, urllib.request, ssl
import ovirtsdk4 as sdk, ovirtsdk4.types as types
url, user, pwfile, ca, disk_id, scratch, target = sys.argv[1:]
con = sdk.Connection(url=url, username=user, password=open(pwfile).read().strip(), ca_file=ca)
ts = con.system_service().image_transfers_service()
tr = ts.add(types.ImageTransfer(disk=types.Disk(id=disk_id), format=types.DiskFormat.COW,
                                direction=types.ImageTransferDirection.DOWNLOAD))
svc = ts.image_transfer_service(tr.id)
while tr.phase == types.ImageTransferPhase.INITIALIZING:
    time.sleep(1)  # CDI polls (and re-POSTs) once a second
    tr = svc.get()
ctx = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(tr.transfer_url, context=ctx) as r, open(scratch, "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
svc.finalize()
con.close()
info = subprocess.run(["qemu-img", "info", "--output=json", scratch], check=True,
                      capture_output=True)
subprocess.run(["qemu-img", "rebase", "-p", "-u", "-F", "raw", "-b", target, scratch], check=True,
               capture_output=True)
subprocess.run(["qemu-img", "commit", "-p", scratch], check=True, capture_output=True)
subprocess.run(["sync", target], check=True)
'''


def make_delta(base: Path, delta: Path, backing_id: str, share: float, seed: int = 3) -> int:
    """A qcow2 snapshot volume over `base` in which `share` of the disk changed: random data in
    scattered 1 MiB writes; returns the bytes changed."""
    size = base.stat().st_size
    qemu("create", "-f", "qcow2", "-b", backing_id, "-F", "raw", delta)
    rnd = random.Random(seed)
    count = int(size * share) // MiB
    offsets = sorted(rnd.sample(range(size // MiB), count))
    script = "".join(f"write -P {rnd.randrange(1, 255)} {o * MiB} 1M\n" for o in offsets)
    import subprocess

    subprocess.run(["qemu-io", "-f", "qcow2", str(delta)], input=script.encode(), check=True,
                   capture_output=True)
    return count * MiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "imageio")
    ap.add_argument("--size", choices=tuple(SIZES), default="1g")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; the best is kept")
    ap.add_argument("--pod-limits", action="store_true",
                    help="run both sides inside CDI's default pod limits (0.75 CPU, 600 MB)")
    args = ap.parse_args()
    work = args.work.resolve() / args.size
    work.mkdir(parents=True, exist_ok=True)
    virtual, data = SIZES[args.size]
    print(f"generating the disk in {work} (first run only) ...", flush=True)
    base_id = "base-" + args.size
    base = work / base_id
    make_disk(base, virtual, data)
    delta_id = "delta-" + args.size
    delta = work / delta_id
    if not delta.exists():
        make_delta(base, delta, base_id, 0.05)
    stage1 = work / "stage1.raw"  # the disk as the first stage left it: the delta's base
    if not stage1.exists():
        shutil.copyfile(base, stage1)
    limits = PodLimits() if args.pod_limits else None
    importer = str(ROOT / ".venv" / "bin" / "importer")
    ovirt_img = str(ROOT / ".venv" / "bin" / "ovirt-img")
    py = str(ROOT / ".venv" / "bin" / "python")
    out = work / "target.img"
    scratch = work / "scratch.qcow2"
    (work / "delta.py").write_text(DELTA_SCRIPT)
    results: list[tuple[str, Measure, Measure, float]] = []
    with ovirt_world(work / "world") as (_daemon, engine, pki):
        cold = engine.add_disk(Disk(new_id(), virtual, [Volume(base_id, base, "raw")], name="cold"))
        warm = engine.add_disk(Disk(new_id(), virtual, [Volume(base_id, base, "raw"),
                                                        Volume(delta_id, delta, "qcow2")],
                                    name="warm"))
        pw = work / "password"
        pw.write_text(engine.PASSWORD)
        access = ["--username", engine.USER, "--password-file", str(pw)]
        origin = engine.url.removesuffix("/ovirt-engine/api")

        def best(cmd: list[str], prepare: Callable[[], None] | None = None) -> Measure:
            return best_of(cmd, args.repeat, limits, [out, scratch], prepare)

        ours = best([importer, "import", "--source", "imageio", engine.url, str(out),
                     "--disk-id", cold.id, *access, "--ca-dir", str(pki.ca_dir), "-q",
                     "-o", "json"])
        base_m = best(["bash", "-c", f"{ovirt_img} download-disk --engine-url {origin} "
                       f"--username {engine.USER} --password-file {pw} --cafile {pki.ca_file} "
                       f"-f raw {cold.id} {out} && sync {out}"])
        results.append(("cold (raw, extents)", ours, base_m, 0.8))
        print(f"  cold: ours {ours.wall:.2f} s, ovirt-img {base_m.wall:.2f} s", flush=True)

        def fresh_target() -> None:
            shutil.copyfile(stage1, out)

        ours = best([importer, "import", "--source", "imageio", engine.url, str(out),
                     "--disk-id", warm.id, "--checkpoint", delta_id, "--previous-checkpoint",
                     base_id, *access, "--ca-dir", str(pki.ca_dir), "-q", "-o", "json"],
                    fresh_target)
        base_m = best([py, str(work / "delta.py"), engine.url, engine.USER, str(pw),
                       str(pki.ca_file), warm.id, str(scratch), str(out)], fresh_target)
        results.append(("delta 5% (qcow2)", ours, base_m, 0.3))
        print(f"  delta: ours {ours.wall:.2f} s, CDI's method {base_m.wall:.2f} s", flush=True)
    out.unlink(missing_ok=True)
    scratch.unlink(missing_ok=True)
    if limits is not None:
        limits.close()

    where = " inside 0.75 CPU / 600 MB" if limits else ""
    missed = print_ratios(f"{virtual // GiB} GiB virtual, {data / GiB:.1f} GiB data, targets in "
                          f"{work}, best of {args.repeat}{where}", results)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
