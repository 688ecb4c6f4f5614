#!/usr/bin/env python3
"""Benchmark: the importer pod against CDI's own importer, both run as CDI runs the pod.

Each row imports one image from nginx (byte ranges on) into a fresh /data volume, in our image
(localhost/importer:ci, scripts/container.sh), as uid 107 with a read-only root, /tmp as tmpfs,
/data, /scratch and the termination log mounted, under CDI's default limits (--cpus 0.75
--memory 600m), with the same environment. CDI's importer runs in the same image with
`--entrypoint` (its binaries built by ../shared/tools/build-cdi-peer.sh; without --peer its
rows are skipped). The "limit" column is `curl -o` of the same source bytes into the same
volume under the same limits: the floor for moving those bytes in that pod.

Runs alternate (ours, CDI's, curl) and the best of --repeat is kept. Printed per row: wall time,
CPU seconds (the pods' cgroup, cpuacct: user + sys of everything in the container) and peak
memory (the cgroup's RSS, sampled), for each, and the ratios.

    .venv/bin/python bench/bench_pod.py [--peer DIR] [--rows qcow2,raw.gz,...] [--big]
                                        [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import GiB, MiB, make_disk, sh, start_nginx

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("IMPORTER_IMAGE", "localhost/importer:ci")
PARENT = "importer-bench-pods"  # the cgroup (v1: cpuacct, memory) every measured pod runs in
CPU_LIMIT, MEMORY_LIMIT = "0.75", "600m"

#: rows: name -> (file in the work dir, the 1 GiB set or the 4 GiB one)
ROWS = {
    "tiny.qcow2": ("tiny.qcow2", "1g"),
    "qcow2": ("disk.qcow2", "1g"),
    "qcow2-c": ("disk-c.qcow2", "1g"),
    "vmdk-ms": ("disk-ms.vmdk", "1g"),
    "vmdk-so": ("disk-so.vmdk", "1g"),
    "raw": ("disk.raw", "1g"),
    "raw.gz": ("disk.raw.gz", "1g"),
    "raw.xz": ("disk-1block.raw.xz", "1g"),
    "raw.xz-blocks": ("disk.raw.xz", "1g"),
    "raw.zst": ("disk.raw.zst", "1g"),
    "4g qcow2": ("disk.qcow2", "4g"),
    "4g raw.gz": ("disk.raw.gz", "4g"),
}
BOOT = (b"\xeb\x63\x90" + bytes(i % 251 for i in range(3, 446)) + bytes(64) + b"\x55\xaa")  # MBR-like


def images(work: Path, size: str, wanted: set[str] | None = None) -> Path:
    """The set for `size` in work/pod-SIZE: a disk that starts with a binary boot sector, and
    the forms of it the rows need (`wanted`: file names; all when None), made by the real tools
    (first run only)."""
    d = work / f"pod-{size}"
    d.mkdir(parents=True, exist_ok=True)
    raw = d / "disk.raw"
    virtual, data = {"1g": (GiB, int(0.3 * GiB)), "4g": (4 * GiB, int(1.2 * GiB))}[size]
    if not raw.exists():
        make_disk(raw, virtual, data)
        with open(raw, "r+b") as f:
            f.write(BOOT)
    steps = {
        "disk.raw.gz": f"pigz -6 -c {raw} > {{out}}",
        "disk-1block.raw.xz": f"xz -1 -c {raw} > {{out}}",
        "disk.raw.xz": f"xz -T2 -1 --block-size=16MiB -c {raw} > {{out}}",
        "disk.raw.zst": f"zstd -q -3 -T2 -c {raw} > {{out}}",
        "disk.qcow2": f"qemu-img convert -f raw -O qcow2 {raw} {{out}}",
        "disk-c.qcow2": f"qemu-img convert -c -f raw -O qcow2 {raw} {{out}}",
        "disk-ms.vmdk": f"qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse {raw} {{out}}",
        "disk-so.vmdk": f"qemu-img convert -f raw -O vmdk -o subformat=streamOptimized {raw} {{out}}",
    }
    for name, cmd in steps.items():
        if wanted is not None and name not in wanted:
            continue
        if not (d / name).exists():
            tmp = d / f".{name}.tmp"
            sh(cmd.format(out=tmp))
            tmp.rename(d / name)
    tiny = d / "tiny.qcow2"
    if not tiny.exists():
        src = d / "tiny.raw"
        src.write_bytes(BOOT + os.urandom(MiB - len(BOOT)))
        sh(f"qemu-img convert -f raw -O qcow2 {src} {tiny}")
    return d


# ------------------------------------------------------------------------------ the pods' cgroup

class PodGroup:
    """cgroup v1 parent of the measured containers: cpuacct.usage accumulates what every
    container in it used (kept after the container's own group is gone), memory's total_rss is
    sampled for the peak."""

    def __init__(self) -> None:
        self.cpu = Path("/sys/fs/cgroup/cpuacct") / PARENT
        self.mem = Path("/sys/fs/cgroup/memory") / PARENT
        if not self.cpu.parent.exists():
            raise SystemExit("bench_pod: needs cgroup v1 cpuacct and memory hierarchies")
        for d in (self.cpu, self.mem, Path("/sys/fs/cgroup/cpu") / PARENT):
            d.mkdir(exist_ok=True)

    def cpu_seconds(self) -> float:
        return int((self.cpu / "cpuacct.usage").read_text()) / 1e9

    def rss(self) -> int:
        for line in (self.mem / "memory.stat").read_text().splitlines():
            key, value = line.split()
            if key == "total_rss":
                return int(value)
        return 0


@dataclass
class Run:
    wall: float
    cpu: float
    peak: int
    ok: bool
    note: str


def podman_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "scripts/container.sh"), "--env"], check=True,
                         capture_output=True, text=True).stdout
    env = dict(os.environ)
    for part in out.split()[1:]:
        k, _, v = part.partition("=")
        env[k] = v
    return env


@contextlib.contextmanager
def volume(work: Path) -> Iterator[Path]:
    d = work / f"vol-{uuid.uuid4().hex[:8]}"
    for sub in ("data", "scratch"):
        (d / sub).mkdir(parents=True)
        os.chown(d / sub, 107, 107)
    (d / "termination-log").touch()
    os.chown(d / "termination-log", 107, 107)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pod_argv(vol: Path, url: str, image_size: int, entrypoint: list[str] | None,
             peer: Path | None, extra_env: dict[str, str] | None = None) -> list[str]:
    a = ["podman", "run", "--rm", "--pull", "never", "--user", "107", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--network", "host", "--read-only",
         "--tmpfs", "/tmp", "--cpus", CPU_LIMIT, "--memory", MEMORY_LIMIT,
         "--cgroup-parent", f"/{PARENT}",
         "-v", f"{vol / 'data'}:/data:rw", "-v", f"{vol / 'scratch'}:/scratch:rw",
         "-v", f"{vol / 'termination-log'}:/dev/termination-log:rw"]
    if peer is not None:
        a += ["-v", f"{peer}:/peer:ro"]
    env = {"IMPORTER_SOURCE": "http", "IMPORTER_ENDPOINT": url, "IMPORTER_CONTENTTYPE": "kubevirt",
           "IMPORTER_IMAGE_SIZE": str(image_size), "OWNER_UID": "bench", "FILESYSTEM_OVERHEAD": "0",
           "PREALLOCATION": "false", "INSECURE_TLS": "false", "IMPORTER_CERT_DIR": "",
           "IMPORTER_ACCESS_KEY_ID": "", "IMPORTER_SECRET_KEY": "", "IMPORTER_UUID": "",
           "IMPORTER_BACKING_FILE": "", "IMPORTER_THUMBPRINT": "",
           "IMPORTER_CURRENT_CHECKPOINT": "", "IMPORTER_PREVIOUS_CHECKPOINT": "",
           "IMPORTER_FINAL_CHECKPOINT": "", "IMPORTER_DISK_ID": "", **(extra_env or {})}
    for k, v in env.items():
        a += ["-e", f"{k}={v}"]
    if entrypoint:
        a += ["--entrypoint", entrypoint[0], IMAGE, *entrypoint[1:]]
    else:
        a += [IMAGE, "-v=1"]
    return a


class Profiler:
    """py-spy attached from the host to the pod's Python process as soon as it appears in the
    pods' cgroup (the pod runs as uid 107 with no capabilities; root outside may trace it)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._attach, daemon=True)

    def __enter__(self) -> Profiler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.proc is not None:
            self.proc.wait(timeout=60)

    def _attach(self) -> None:
        root = Path("/sys/fs/cgroup/cpuacct") / PARENT
        while not self._stop.is_set():
            for tasks in root.glob("*/tasks"):
                for pid in tasks.read_text().split():
                    with contextlib.suppress(OSError):
                        if "python" in os.readlink(f"/proc/{pid}/exe"):
                            self.proc = subprocess.Popen(
                                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                 pid, "--rate", "250", "--nonblocking", "--threads",
                                 "--format", "raw", "-o", str(self.out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            return
            time.sleep(0.005)


#: leaves where a thread waits for another or for the network: left out of the summary
WAITS = ("Condition.wait", "_PollLikeSelector.select", "Event.wait", "Thread.join",
         "Queue.get", "_worker")


def profile_summary(raw: Path, top: int = 14) -> str:
    """Self time per function (collapsed stacks from py-spy's raw format), largest first,
    waits left out; under the CPU limit a throttled thread still counts as busy."""
    own: dict[str, int] = {}
    total = waits = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1].split(":")[0] + ")"
        if leaf.split(" (")[0] in WAITS:
            waits += int(count)
            continue
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    rows = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"  {100 * n / total:5.1f}%  {name}" for name, n in rows) + \
        f"\n  ({total} busy samples at 250 Hz, all threads; {waits} waiting left out)"


def measure(argv: list[str], group: PodGroup, env: dict[str, str],
            profile: Path | None = None) -> Run:
    os.sync()
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, group.rss())
            stop.wait(0.02)

    cpu0 = group.cpu_seconds()
    t = time.monotonic()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with Profiler(profile) if profile is not None else contextlib.nullcontext():
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.monotonic() - t
    stop.set()
    th.join()
    cpu = group.cpu_seconds() - cpu0
    note = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1][:160]
    return Run(wall, cpu, peak, r.returncode == 0, note)


def best(runs: list[Run]) -> Run:
    good = [r for r in runs if r.ok]
    return min(good, key=lambda r: r.wall) if good else runs[-1]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", type=Path, help="CDI's binaries (build-cdi-peer.sh OUTDIR)")
    ap.add_argument("--rows", default=",".join(r for r in ROWS if not r.startswith("4g")))
    ap.add_argument("--big", action="store_true", help="also the 4 GiB rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--no-limit-column", action="store_true")
    ap.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a variable for our pod only (IMPORTER_CONVERTER=qemu-img: the path "
                    "before the native readers)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="also run ours once more per row under py-spy (from the host) and "
                    "print where its samples fall; the raw stacks are kept in DIR")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    ours_env = dict(e.split("=", 1) for e in args.ours_env)
    if args.big:
        rows += [r for r in ROWS if r.startswith("4g") and r not in rows]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if os.geteuid() != 0:
        ap.error("run as root (podman, cgroups)")
    env = podman_env()
    if subprocess.run(["podman", "image", "exists", IMAGE], env=env).returncode != 0:
        ap.error(f"{IMAGE} is missing: run scripts/container.sh")
    peer = args.peer.resolve() if args.peer else None
    if peer is not None and not (peer / "cdi-importer").is_file():
        ap.error(f"{peer}/cdi-importer is missing: run ../shared/tools/build-cdi-peer.sh")
    sets = {size: images(args.work, size, {ROWS[r][0] for r in rows if ROWS[r][1] == size})
            for size in {ROWS[r][1] for r in rows}}
    group = PodGroup()
    servers = {}
    for size, d in sets.items():
        servers[size] = start_nginx(args.work / f"nginx-{size}", d)
    print(f"# importer pod vs CDI's importer pod (limits {CPU_LIMIT} CPU, {MEMORY_LIMIT}; best "
          f"of {args.repeat})")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores; image {IMAGE}")
    print("| row | ours s | ours CPU s | ours MiB | CDI s | CDI CPU s | CDI MiB | curl s | "
          "ours/CDI | CPU ours/CDI | ours/curl |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    profiles: list[str] = []
    try:
        for row in rows:
            name, size = ROWS[row]
            port, _ = servers[size]
            url = f"http://127.0.0.1:{port}/{name}"
            image_size = 4 * GiB if size == "4g" else GiB
            results: dict[str, list[Run]] = {"ours": [], "cdi": [], "curl": []}
            for _ in range(args.repeat):
                with volume(args.work) as vol:
                    results["ours"].append(measure(pod_argv(vol, url, image_size, None, None, ours_env),
                                                   group, env))
                if peer is not None:
                    with volume(args.work) as vol:
                        results["cdi"].append(measure(pod_argv(
                            vol, url, image_size, ["/peer/cdi-importer", "-v=1"], peer),
                            group, env))
                if not args.no_limit_column:
                    with volume(args.work) as vol:
                        results["curl"].append(measure(pod_argv(
                            vol, url, image_size, ["/usr/bin/python3", "-c",
                                                   CURL_O, url], None), group, env))
            o = best(results["ours"])
            c = best(results["cdi"]) if results["cdi"] else None
            k = best(results["curl"]) if results["curl"] else None
            print(_row(row, o, c, k), flush=True)
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                raw = args.profile / f"{row}.txt"
                with volume(args.work) as vol:
                    measure(pod_argv(vol, url, image_size, None, None, ours_env), group, env, raw)
                if raw.exists():
                    profiles.append(f"{row}:\n{profile_summary(raw)}")
        for text in profiles:
            print(f"\n# py-spy, self time per function: {text}")
    finally:
        for _size, (_port, nginx_args) in servers.items():
            subprocess.run(["nginx", *nginx_args, "-s", "stop"], check=False)
    return 0


#: `curl -o /data/disk.img` in the pod: the image has no curl, so the same with the stdlib
#: (one read and one write a MiB: the floor, with no format work at all)
CURL_O = ("import sys, urllib.request\n"
          "with urllib.request.urlopen(sys.argv[1]) as r, open('/data/disk.img', 'wb') as f:\n"
          "    while b := r.read(1 << 20):\n"
          "        f.write(b)\n")


def _row(name: str, o: Run, c: Run | None, k: Run | None) -> str:
    def cell(r: Run | None, what: str) -> str:
        if r is None:
            return "-"
        if not r.ok:
            return f"FAILED ({r.note})" if what == "wall" else "-"
        return {"wall": f"{r.wall:.2f}", "cpu": f"{r.cpu:.2f}", "mem": f"{r.peak / MiB:.0f}"}[what]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    ok_c = c if c is not None and c.ok else None
    ok_k = k if k is not None and k.ok else None
    return (f"| {name} | {cell(o, 'wall')} | {cell(o, 'cpu')} | {cell(o, 'mem')} | "
            f"{cell(c, 'wall')} | {cell(c, 'cpu')} | {cell(c, 'mem')} | {cell(k, 'wall')} | "
            f"{ratio(o.wall if o.ok else None, ok_c.wall if ok_c else None)} | "
            f"{ratio(o.cpu if o.ok else None, ok_c.cpu if ok_c else None)} | "
            f"{ratio(o.wall if o.ok else None, ok_k.wall if ok_k else None)} |")


if __name__ == "__main__":
    raise SystemExit(main())

