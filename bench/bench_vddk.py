"""Benchmark: VMware VDDK imports (issue 12), against nbdcopy from the same nbdkit export.

Rows:
* cold    `importer import --source vddk` of the bench disk vs `nbdcopy` (libnbd's copier,
          sparse, 4 connections) from nbdkit running the same plugin with the same arguments
          to a file; goal <= 1.1 (we add Python, the vSphere lookups and nbdkit's start);
* delta   one warm stage whose snapshot changed 5 % of the disk (scattered 1 MiB writes), by
          changed areas, vs our own full copy of the same disk; goal <= 0.1.

VDDK cannot be redistributed: nbdkit runs the tests' stand-in vddk plugin (a file reader with
the plugin's contract), and vCenter is the tests' vcsim with changed block tracking. What is
measured is therefore our side: inventory, nbdkit's start, block status, NBD reads, writes.

    .venv/bin/python bench/bench_vddk.py [--size 1g|4g] [--repeat N] [--pod-limits]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
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
from tests.sources.ovirt.servers import make_pki  # noqa: E402
from tests.sources.vmware.servers import (  # noqa: E402
    build_standin,
    build_vcsim,
    mangle,
    read_inventory,
    sparse_copy,
    start_vcsim,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "vddk")
    ap.add_argument("--size", choices=tuple(SIZES), default="1g")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pod-limits", action="store_true")
    args = ap.parse_args()
    work = args.work.resolve() / args.size
    work.mkdir(parents=True, exist_ok=True)
    virtual, data = SIZES[args.size]
    base = work / "base.raw"
    print(f"generating the disk in {work} (first run only) ...", flush=True)
    make_disk(base, virtual, data)
    build = Path(tempfile.mkdtemp(prefix="bench-vddk-"))
    plugin = build_standin(build)
    pki = make_pki(build / "pki")
    vc = start_vcsim(build_vcsim(build), build, cert=pki.server_pem, key=pki.server_key,
                     capacity=virtual, page=2000)
    limits = PodLimits() if args.pod_limits else None
    out = work / "target.img"
    results: list[tuple[str, Measure, Measure, float]] = []
    try:
        inv = read_inventory(vc)
        libdir = build / "libdir"
        disks = libdir / "disks"
        disks.mkdir(parents=True)
        (libdir / "password").write_text(vc.password)
        name = mangle(inv.backing_file)
        now = disks / f"{name}.raw"
        os.link(base, now)  # the cold copy: the disk as it is
        s1 = disks / f"{name}@{inv.snapshots[0]}.raw"
        os.link(base, s1)
        s2 = disks / f"{name}@{inv.snapshots[1]}.raw"
        sparse_copy(base, s2)
        rnd = random.Random(5)
        count = int(virtual * 0.05) // MiB
        offsets = sorted(rnd.sample(range(virtual // MiB), count))
        with open(s2, "r+b") as f:
            for o in offsets:
                f.seek(o * MiB)
                f.write(os.urandom(MiB))
        vc.areas.write_text(json.dumps({f"{inv.snapshots[1]}|{inv.change_ids[0]}":
                                        [[o * MiB, MiB] for o in offsets]}))
        pw = build / "password"
        pw.write_text(vc.password)
        access = ["--source", "vddk", vc.url, "--vm-uuid", inv.uuid, "--backing-file",
                  inv.backing_file, "--thumbprint", vc.thumbprint, "--username", vc.user,
                  "--password-file", str(pw), "--vddk-libdir", str(libdir), "--vddk-plugin",
                  str(plugin), "-q", "-o", "json"]
        importer = str(ROOT / ".venv" / "bin" / "importer")

        def best(cmd: list[str], prepare: Callable[[], None] | None = None) -> Measure:
            return best_of(cmd, args.repeat, limits, [out], prepare)

        nbdkit = (f"nbdkit -U - --readonly --filter=retry --filter=cacheextents {plugin} "
                  f"libdir={libdir} server=127.0.0.1 user={vc.user} password=+{pw} "
                  f"thumbprint={vc.thumbprint} vm=moref={vc.vm_moref} "
                  f"'file={inv.backing_file}' --run 'nbdcopy --connections=4 \"$uri\" {out}'"
                  f" && sync {out}")
        cold = best([importer, "import", *access, str(out)])
        base_m = best(["bash", "-c", nbdkit])
        results.append(("cold (block status)", cold, base_m, 1.1))
        print(f"  cold: ours {cold.wall:.2f} s, nbdcopy {base_m.wall:.2f} s", flush=True)

        def stage1() -> None:
            sparse_copy(base, out)

        delta = best([importer, "import", *access, "--checkpoint", "stage-2",
                      "--previous-checkpoint", "stage-1", str(out)], stage1)
        results.append(("delta 5% vs our full copy", delta, cold, 0.1))
        print(f"  delta: {delta.wall:.2f} s, full copy {cold.wall:.2f} s", flush=True)
    finally:
        vc.stop()
        out.unlink(missing_ok=True)
        shutil.rmtree(build, ignore_errors=True)
        if limits is not None:
            limits.close()

    where = " inside 0.75 CPU / 600 MB" if limits else ""
    missed = print_ratios(f"{virtual // GiB} GiB virtual, {data / GiB:.1f} GiB data, targets in "
                          f"{work}, best of {args.repeat}{where}", results)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
