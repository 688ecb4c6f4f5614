"""Benchmark: OVA appliances (issue 23), the disk read straight out of the tar, against what a
user does without importer (extract the disk from the OVA, then `qemu-img convert` it).

Rows:
* ova http, no ranges  an OVA served by nginx with `max_ranges 0` (the appliance streamed):
                       targets 0 bytes staged and a peak RSS <= 256 MiB; baseline `curl | tar
                       -x` into scratch, then qemu-img convert;
* ova http, ranges     the same OVA with ranges;
* ova file             a local OVA; baseline `tar -xf` into scratch, then qemu-img convert.

The appliance holds one streamOptimized VMDK (what VMware and VirtualBox export) of the bench
disk (1 GiB virtual, 0.3 GiB data; 4 GiB / 1.2 GiB with --size 4g), in an OVF written as
ovftool writes it, with a SHA-256 manifest (tests/ova_images.py).

    .venv/bin/python bench/bench_ova.py [--size 1g|4g] [--repeat N] [--pod-limits]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_bench import (  # noqa: E402
    SIZES,
    Measure,
    MiB,
    PodLimits,
    best_of,
    make_disk,
    print_ratios,
    start_nginx,
)
from tests.ova_images import OvaDisk, make_ova  # noqa: E402

MAX_RSS = 256 * MiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1g")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pod-limits", action="store_true",
                    help="run every command under CDI's pod limits (0.75 CPU, 600 MB)")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/importer-bench-ova"))
    args = ap.parse_args()
    work = args.work / args.size
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    raw = work / "disk.raw"
    if not raw.exists():
        make_disk(raw, *SIZES[args.size])
    vmdk = work / "disk.vmdk"
    if not vmdk.exists():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                        "subformat=streamOptimized", str(raw), str(vmdk)], check=True)
    ova = www / "bench.ova"
    if not ova.exists():
        shutil.rmtree(work / "bench.ova.d", ignore_errors=True)
        made = make_ova(work / "bench.ova", "bench", [OvaDisk(vmdk, raw.stat().st_size)])
        (work / "bench.ova").rename(ova)
        (work / "member").write_text(made[0])
    member = (work / "member").read_text()
    print(f"OVA: {ova.stat().st_size / MiB:.0f} MiB holding {member}", flush=True)
    port, nginx_args = start_nginx(work, www)
    limits = PodLimits() if args.pod_limits else None
    importer = str(ROOT / ".venv" / "bin" / "importer")
    try:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            out, scratch = Path(tmp) / "out.img", Path(tmp) / "scratch"
            convert = (f"qemu-img convert -f vmdk {scratch}/{member} -O raw {out} && sync {out} "
                       f"&& rm -rf {scratch}")
            rows = [
                ("ova http, no ranges", f"http://127.0.0.1:{port}/norange/bench.ova",
                 f"mkdir -p {scratch} && curl -s http://127.0.0.1:{port}/bench.ova | "
                 f"tar -xf - -C {scratch} && {convert}"),
                ("ova http, ranges", f"http://127.0.0.1:{port}/bench.ova",
                 f"mkdir -p {scratch} && curl -s http://127.0.0.1:{port}/bench.ova | "
                 f"tar -xf - -C {scratch} && {convert}"),
                ("ova file", str(ova), f"mkdir -p {scratch} && tar -xf {ova} -C {scratch} && "
                 f"{convert}"),
            ]
            results: list[tuple[str, Measure, Measure, float]] = []
            missed = 0
            for name, src, baseline in rows:
                ours = best_of([importer, "import", "-q", "-o", "json", src, str(out)],
                               args.repeat, limits, [out])
                base = best_of(["bash", "-c", baseline], args.repeat, limits, [out])
                result = json.loads(ours.stdout) if ours.ok else {}
                staged = int(result.get("staged_bytes", -1))
                print(f"  {name}: plan {result.get('plan')}, staged {staged} bytes, peak RSS "
                      f"{ours.peak_rss / MiB:.0f} MiB, CPU {ours.cpu:.2f} s", flush=True)
                if name.endswith("no ranges"):
                    ok = staged == 0 and ours.peak_rss <= MAX_RSS
                    missed += not ok
                    print(f"    target: 0 bytes staged and peak RSS <= {MAX_RSS // MiB} MiB: "
                          f"{'ok' if ok else 'MISS'}")
                results.append((name, ours, base, 1.0))
            missed += print_ratios(f"OVA ({args.size}; ours against extract + qemu-img; "
                                   f"{'pod limits' if limits else 'no limits'})", results)
    finally:
        subprocess.run(["nginx", *nginx_args, "-s", "stop"], check=False)
        if limits is not None:
            limits.close()
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
