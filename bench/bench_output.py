"""Benchmark: `importer import LOCAL DEST -O FMT` against `qemu-img convert` of the same local
file followed by `sync DEST` (what makes qemu-img's output as durable as ours, which is
fsync'ed before its rename). Issue 24 item 5: -O from a local file was 3-5x qemu-img's time
when it went through a raw copy.

    .venv/bin/python bench/bench_output.py [--size 1g|4g] [--repeat N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_bench import SIZES, Measure, best_of, make_disk, print_ratios  # noqa: E402

ROWS = [("raw", "qcow2"), ("qcow2", "qcow2"), ("qcow2", "vmdk"), ("qcow2", "vhdx"),
        ("vmdk", "qcow2"), ("qcow2", "vdi")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1g")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/importer-bench-output"))
    args = ap.parse_args()
    work = args.work / args.size
    work.mkdir(parents=True, exist_ok=True)
    sources = {"raw": work / "disk.raw", "qcow2": work / "disk.qcow2", "vmdk": work / "disk.vmdk"}
    if not sources["raw"].exists():
        make_disk(sources["raw"], *SIZES[args.size])
    for fmt in ("qcow2", "vmdk"):
        if not sources[fmt].exists():
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt,
                            str(sources["raw"]), str(sources[fmt])], check=True)
    importer = str(ROOT / ".venv" / "bin" / "importer")
    results: list[tuple[str, Measure, Measure, float]] = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for src_fmt, out_fmt in ROWS:
            src = sources[src_fmt]
            ours_out, base_out = Path(tmp) / f"ours.{out_fmt}", Path(tmp) / f"base.{out_fmt}"
            ours = best_of([importer, "import", "-q", str(src), str(ours_out), "-O", out_fmt],
                           args.repeat, None, [ours_out])
            base = best_of(["sh", "-c", f"qemu-img convert -f {src_fmt} -O {out_fmt} {src} "
                            f"{base_out} && sync {base_out}"], args.repeat, None, [base_out])
            results.append((f"{src_fmt} -> -O {out_fmt}", ours, base, 2.0))
    missed = print_ratios(f"-O from a local file ({args.size}): ours against qemu-img convert "
                          "+ sync", results)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
