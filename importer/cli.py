"""Command-line front-end: flags -> ImportConfig -> the core; progress bar on a terminal,
one actionable line on failure, `-o json` for machines.

Exit codes: 0 success, 1 failure, 2 usage or configuration error, 128+N killed by signal N.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import ContentType, ImportConfig, build_config
from .engine import inspect_source, run_import, verify_import
from .errors import ConfigError, ImporterError
from .progress import Progress
from .quantity import is_decimal
from .reporting import JsonLines, ProgressReporter
from .result import ImportResult
from .settings import INPUT_FORMATS, OUTPUT_FORMATS
from .sources.kinds import kind_for, registered, selectable_names
from .stopping import StopSignals

__all__ = ["main"]

log = logging.getLogger("importer")


MIN_PROGRESS_INTERVAL = 0.05


def _interval(text: str) -> float:
    """--progress-interval: 0 or less printed lines in a busy loop (420,000 in 3 s)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not MIN_PROGRESS_INTERVAL <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} seconds: give at least {MIN_PROGRESS_INTERVAL} (or --progress none)")
    return value


class _UsageError(Exception):
    def __init__(self, usage: str, prog: str, message: str) -> None:
        super().__init__(message)
        self.usage, self.prog = usage, prog


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors come back to main(): with `-o json` they are answered in
    JSON on standard output too, as every other outcome is."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.format_usage(), self.prog, message)


def _wants_json(argv: Sequence[str]) -> bool:
    for i, a in enumerate(argv):
        if a in ("-o", "--output") and i + 1 < len(argv) and argv[i + 1] == "json":
            return True
        if a in ("-ojson", "--output=json", "-o=json"):
            return True
    return False


def _json_line(payload: dict[str, Any], out: Any) -> None:
    """One JSON object on one line: what CI reads with `jq` or line by line."""
    print(json.dumps(payload, default=str, separators=(",", ":")), file=out)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every default shown (`(default: 4)`) where the help does not say it already and there is
    one worth saying; the examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


IMPORT_EXAMPLES = """examples:
  importer import https://example.org/fedora.qcow2.xz /dev/loop3      a block device
  importer import -f qcow2 disk.qcow2 disk.img --image-size 20Gi      a file, grown
  importer import disk.vmdk disk.qcow2 -O qcow2 -c                     another format
  importer import docker://quay.io/containerdisks/fedora:41 disk.img   a container disk
  importer import https://host/appliance.ova disk.img --disk 2         an OVA's disk
  curl -s https://example.org/disk.raw.gz | importer import - disk.img
  importer import https://host/tree.tar.gz ./dir --content-type archive
"""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="importer", formatter_class=_Help,
        description="Import a virtual-machine disk image into a file, a block device or (for "
                    "archives) a directory.",
        epilog="`importer COMMAND --help` lists a command's options; `man importer` has them "
               "all.")
    p.add_argument("--version", action="version", version=f"importer {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (repeatable)")
        sp.add_argument("-q", "--quiet", action="store_true", help="only errors")
        sp.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="result format on stdout")
        sp.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="auto: a bar on a terminal, else a line every few seconds")
        sp.add_argument("--progress-interval", type=_interval, default=5.0, metavar="SECONDS",
                        help="seconds between progress lines (default 5)")
        sp.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object a line on stderr, as the pod logs")
        g = sp.add_argument_group("source access")
        g.add_argument("--username", help="user for HTTP basic auth, S3 (access key) or a registry")
        g.add_argument("--password-file", metavar="FILE",
                       help="file holding the password (or set IMPORTER_PASSWORD); never on argv")
        g.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                       help="extra request header (repeatable)")
        g.add_argument("--header-file", action="append", default=[], metavar="PATH",
                       help="file, or directory of files, each one secret 'Name: value' header")
        g.add_argument("--ca-dir", metavar="DIR", help="directory of extra CA certificates (PEM)")
        g.add_argument("--ca-file", metavar="FILE", help="a file of extra CA certificates (PEM)")
        g.add_argument("-k", "--insecure", action="store_true",
                       help="skip TLS certificate verification")
        g.add_argument("--retries", type=int, default=8, help="retries after network errors")
        g.add_argument("--retry-time", type=float, default=30.0, metavar="SECONDS",
                       help="give up when failures go on this long (default 30; CDI gives up at "
                            "once and its pod is restarted)")
        g.add_argument("--source", dest="source_kind",
                       choices=("auto", *selectable_names()),
                       default="auto",
                       help="what SOURCE is when its scheme cannot tell (an https URL of a "
                            "path-style S3 endpoint, an oVirt engine)")
        w = sp.add_argument_group("warm imports (--source imageio or vddk)")
        w.add_argument("--checkpoint", metavar="SNAPSHOT",
                       help="a stage: the snapshot to copy (oVirt: its volume id; VMware: its "
                            "id, snapshot-NN, or its name)")
        w.add_argument("--previous-checkpoint", metavar="SNAPSHOT",
                       help="the snapshot the previous stage copied (VMware: or a change ID): "
                            "only the changes since it are applied onto DEST, which must hold "
                            "that stage's result")
        g.add_argument("--read-timeout", type=float, default=120.0,
                       help="seconds without data before a connection is resumed")
        g.add_argument("--connect-timeout", type=float, default=30.0,
                       help="seconds to establish a connection")
        g.add_argument("--low-speed-limit", type=int, default=1024, metavar="BYTES",
                       help="a transfer slower than BYTES per --low-speed-time is resumed")
        g.add_argument("--low-speed-time", type=float, default=60.0, metavar="SECONDS",
                       help="the window of --low-speed-limit (default 60)")
        for kind in registered():  # each kind's own flags (sources/kinds.py)
            if kind.cli is not None:
                kind.cli.add_flags(sp.add_argument_group(kind.cli.title))

    def planning(sp: argparse.ArgumentParser) -> None:
        """Options that change the plan: inspect takes them too, so it shows the same plan."""
        g = sp.add_argument_group("plan")
        g.add_argument("--content-type", choices=("kubevirt", "archive"), default="kubevirt",
                       help="kubevirt: a disk image (default); archive: a tar to extract")
        g.add_argument("--checksum", metavar="ALGO:HEX",
                       help="md5/sha1/sha256/sha512 of the source bytes, verified before success")
        g.add_argument("--checksum-file", metavar="FILE",
                       help="a SHA256SUMS or CHECKSUM file (sha256sum's format, or BSD-tagged): "
                            "the line for the source's file name is the checksum")
        g.add_argument("--converter", choices=("auto", "qemu-img"), default="auto",
                       help="auto: the native reader where there is one (qcow2), qemu-img "
                            "otherwise (default); qemu-img: always qemu-img")
        g.add_argument("-f", "--format", dest="input_format", choices=INPUT_FORMATS,
                       help="the format the data must have, after decompression (qemu-img's "
                            "-f): raw takes it as it is; others must match and are inspected; "
                            "ova: an appliance, whose disk is imported")
        g.add_argument("--disk", dest="ova_disk", metavar="N|FILE",
                       help="which disk of an OVA: its number from 1, its file name or disk id "
                            "(default: the only one)")
        g.add_argument("--connections", type=int, default=4,
                       help="parallel range requests for random access (default 4)")

    imp = sub.add_parser("import", help="import SOURCE into DEST", formatter_class=_Help,
                         usage="%(prog)s [options] SOURCE DEST   (importer import --help: the "
                               "options)", epilog=IMPORT_EXAMPLES)
    imp.add_argument("source", metavar="SOURCE",
                     help="http(s)://, s3://, gs://, docker://host/repo:tag, oci-archive:PATH, "
                          "oci:DIR, docker-archive:PATH, "
                          "file:// URL, local path, - for standard input, or an oVirt "
                          "engine's API URL with --source imageio")
    imp.add_argument("dest", metavar="DEST",
                     help="file, block device, directory (archive), or - for standard output "
                          "(raw, in order)")
    imp.add_argument("--image-size", metavar="SIZE",
                     help="size of the resulting disk (10Gi, 500M, 1e9); grows, never shrinks")
    imp.add_argument("--preallocation", action="store_true", help="allocate every block")
    imp.add_argument("--force", "--overwrite", dest="force", action="store_true",
                     help="replace an existing DEST file, or write over a block device that "
                          "holds a partition table or a file system")
    imp.add_argument("-O", "--output-format", choices=OUTPUT_FORMATS,
                     default="raw", help="format of DEST (default raw; the others are written "
                                         "by qemu-img)")
    imp.add_argument("-c", "--compress", action="store_true",
                     help="compressed output: qcow2 compressed clusters, or vmdk "
                          "streamOptimized")
    imp.add_argument("--scratch-dir", metavar="DIR",
                     help="where to stage images that cannot be streamed")
    imp.add_argument("-t", "--cache-mode", choices=("none", "writeback", "writethrough", "directsync"),
                     help="qemu-img target cache mode (default: none when O_DIRECT works)")
    planning(imp)
    common(imp)

    ins = sub.add_parser("inspect", usage="%(prog)s [options] SOURCE   (importer inspect --help: "
                                          "the options)", formatter_class=_Help,
                         help="show what SOURCE holds, from its headers only, and "
                                         "the plan an import would take",
                         epilog="examples:\n  importer inspect https://example.org/disk.qcow2\n"
                                "  importer inspect -o json --fail-unsafe ./upload.vmdk\n")
    ins.add_argument("source", metavar="SOURCE",
                     help="what import takes as SOURCE: a URL, bucket object, container disk, "
                          "local file or - (only the headers are read)")
    ins.add_argument("--fail-unsafe", action="store_true",
                     help="exit 3 when the image is unsafe (it is reported either way)")
    planning(ins)
    common(ins)
    ver = sub.add_parser("verify", formatter_class=_Help,
                         usage="%(prog)s [options] SOURCE DEST   (importer verify --help: the "
                               "options)",
                         help="exit 0 when DEST holds what importing SOURCE would write, 1 "
                              "when not (the first byte that differs is named)",
                         epilog="examples:\n  importer verify https://example.org/disk.qcow2 "
                                "/dev/vdb\n  importer verify -o json disk.vmdk disk.img\n")
    ver.add_argument("source", metavar="SOURCE", help="what import takes as SOURCE")
    ver.add_argument("dest", metavar="DEST", help="the file or block device to check")
    ver.add_argument("--image-size", metavar="SIZE",
                     help="the size the import grew DEST to (the rest must read as zeros)")
    ver.add_argument("--scratch-dir", metavar="DIR",
                     help="where a format qemu-img converts is copied to be compared")
    planning(ver)
    common(ver)
    # CDI's front-ends, configured by CDI's environment: after the commands a user types
    sub.add_parser("pod", help="run as CDI's importer pod (configured by CDI's environment)")
    sub.add_parser("upload-server", help="run as CDI's upload server (cdi-uploadserver; "
                                         "configured by CDI's environment)")
    return p


def _klog_compatible(argv: Sequence[str]) -> list[str]:
    """Accept `-v=3` as CDI's controller passes it (argparse would read '=3' as a value)."""
    out = []
    for a in argv:
        if a.startswith("-v=") and is_decimal(a[3:]):
            out += ["-v"] * min(int(a[3:]), 3)
        else:
            out.append(a)
    return out


#: the `-o json` result's schema (README: The JSON result); raised when a key changes meaning
SCHEMA_VERSION = 1
#: flags of every command that a user may put before it (`importer -v import ...`)
_GLOBAL = {"-v": 0, "--verbose": 0, "-q": 0, "--quiet": 0, "-o": 1, "--output": 1,
           "--progress": 1, "--progress-interval": 1, "--log-format": 1}


def _global_flags_after_command(argv: list[str]) -> list[str]:
    """argparse takes a subcommand's flags after it; users type global ones before it too."""
    moved: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help",
                                                                         "--version"):
        flag = argv[i].split("=", 1)[0]
        takes = _GLOBAL.get(flag)
        if takes is None and argv[i].startswith("-v") and set(argv[i][1:]) == {"v"}:
            takes = 0  # -vv
        if takes is None:
            break
        width = 1 + (takes if "=" not in argv[i] else 0)
        moved += argv[i:i + width]
        i += width
    if not moved or i >= len(argv):
        return argv
    return [argv[i], *moved, *argv[i + 1:]]


def error_code(exc: ImporterError) -> str:
    """A stable name for the class of failure (the class names are not an interface)."""
    import re

    name = type(exc).__name__.removesuffix("Error") or "Importer"
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _size_warnings(given: str | None, config: ImportConfig) -> None:
    """qemu-img users read 10G as GiB; Kubernetes (and we) as 10^9 bytes. Say so."""
    import re

    if given and re.fullmatch(r"\s*\d+(\.\d+)?\s*[kMGTPE]\s*", given):
        unit = given.strip()[-1]
        log.warning("--image-size %s means %s bytes (Kubernetes units: %s = 10^%d); did you "
                    "mean %si?", given, config.image_size, unit, "kMGTPE".index(unit) * 3 + 3,
                    given.strip()[:-1] + {"k": "K"}.get(unit, unit))
    size = config.image_size
    if size is not None and config.dest.is_block_device():
        from .podconfig import device_size

        if size > device_size(config.dest):
            log.warning("--image-size %s is larger than the block device %s (%d bytes): the "
                        "disk keeps the device's size", given, config.dest,
                        device_size(config.dest))


def _output_warnings(args: argparse.Namespace, config: ImportConfig) -> None:
    from .output_format import check_output, name_mismatch

    check_output(args.output_format, args.compress)
    if args.output_format != "raw" and config.content_type is ContentType.ARCHIVE:
        raise ConfigError(f"-O {args.output_format} writes a disk image, and --content-type "
                          "archive extracts files into a directory; leave one of them out")
    if args.output_format != "raw" and config.delta_of is not None:
        raise ConfigError(f"-O {args.output_format}: a warm stage applies changes onto the raw "
                          "disk the previous stage wrote; import warm stages as raw")
    if args.output_format != "raw" and config.preallocation:
        raise ConfigError(f"--preallocation applies to raw output; -O {args.output_format} "
                          "images grow as they are written")
    if str(config.dest) != "-" and config.content_type is not ContentType.ARCHIVE:
        warning = name_mismatch(config.dest, args.output_format)
        if warning:
            log.warning("%s", warning)


def _import_as(args: argparse.Namespace, config: ImportConfig, bar: ProgressReporter,
               cancel: threading.Event) -> ImportResult:
    from .output_format import import_as

    def stage(_name: str) -> Progress:
        progress = Progress()
        bar.follow(progress)
        return progress

    return import_as(config, args.output_format, args.compress, stage=stage, cancel=cancel,
                     run=run_import)


def _refuse_to_clobber(config: ImportConfig) -> None:
    """An existing file, or a device holding a partition table or a file system (as mkfs
    asks), is replaced only with --force. A warm stage writes onto its disk by design; an
    archive may extract into an existing directory, and what its members would replace is
    checked once they are known (sinks/archive.py)."""
    from .sinks.target import dest_kind

    dest = config.dest
    if config.delta_of is not None or config.content_type is ContentType.ARCHIVE:
        return
    kind = dest_kind(dest)  # refuses a link to a file, a dangling link, a socket
    if kind == "block":
        found = _signature(dest)
        if found:
            raise ConfigError(f"{dest} holds {found}; importing would destroy it. Give --force "
                              "to write over it")
    elif kind == "file":
        raise ConfigError(f"{dest} exists; give --force to replace it (it is replaced only "
                          "once the import succeeded)")


def _signature(device: Path) -> str | None:
    """What blkid (util-linux) finds on the device: a partition table or a file system."""
    import shutil
    import subprocess

    if not shutil.which("blkid"):
        return None
    r = subprocess.run(["blkid", "-p", "-o", "export", str(device)], capture_output=True,
                       text=True, timeout=30, check=False)
    if r.returncode != 0:  # 2: nothing found
        return None
    fields = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    if fields.get("PTTYPE"):
        return f"a {fields['PTTYPE']} partition table"
    return f"a file system ({fields.get('TYPE', 'unknown')})" if fields else None


class _Plain(logging.Formatter):
    """`importer: warning: ...` as Unix tools speak, on a terminal and in plain logs; with
    -vv the logger and time too, for debugging."""

    def __init__(self, detailed: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed else None)
        self._detailed = detailed

    def format(self, record: logging.LogRecord) -> str:
        if self._detailed:
            return super().format(record)
        level = record.levelname.lower()
        prefix = f"importer: {level}: " if record.levelno >= logging.WARNING else "importer: "
        return prefix + record.getMessage()


class _Once(logging.Filter):
    """A warning is said once: the same text again (a retry's reason, a skipped member's
    kind) adds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


def _setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(_Plain(detailed=verbose >= 2))
        handler.addFilter(_Once())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # progress lines are asked for separately (--progress), whatever the verbosity
    logging.getLogger("importer.progress").setLevel(logging.INFO if not quiet else logging.ERROR)
    logging.getLogger("httpcore").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["pod"]:  # the CDI pod front-end: configured by environment, not flags
        from .pod import main as pod_main

        return pod_main(raw[1:])
    if raw[:1] == ["upload-server"]:  # CDI's upload server: configured by environment too
        from .uploadserver.server import main as upload_main

        return upload_main(raw[1:])
    args_list = _global_flags_after_command(_klog_compatible(raw))
    try:
        args = _parser().parse_args(args_list)
    except _UsageError as exc:
        sys.stderr.write(f"{exc.usage}{exc.prog}: error: {exc}\n")
        if _wants_json(args_list):
            _json_line({"schema_version": SCHEMA_VERSION,
                        "error": {"code": "usage", "message": f"{exc.prog}: {exc}"}}, sys.stdout)
        return 2
    _setup_logging(args.verbose, args.quiet, args.log_format)
    stop = StopSignals()
    progress = Progress()
    mode = args.progress
    if mode == "auto":
        mode = "none" if args.quiet or args.command != "import" else (
            "bar" if sys.stderr.isatty() and args.log_format == "text" else "lines")
    bar = ProgressReporter(progress, mode, interval=args.progress_interval,
                           json_lines=args.log_format == "json")
    # DEST - is the disk on stdout: the result (or the error) goes to stderr then
    out = sys.stderr if getattr(args, "dest", "") == "-" else sys.stdout
    try:
        result = {"schema_version": SCHEMA_VERSION,
                  **_run_command(args, progress, stop.cancel, bar)}
        stop.answered.set()
        bar.close()
        if not (args.quiet and args.output == "text" and args.command != "inspect"):
            _print_result(args.command, result, args.output, out)  # quiet: nothing on success
        return _exit_status(args, result)
    except ImporterError as exc:
        bar.close()
        kind = "configuration error" if isinstance(exc, ConfigError) else "error"
        print(f"importer: {kind}: {exc}", file=sys.stderr)
        if args.verbose >= 2:
            traceback.print_exc()
        if args.output == "json":
            _json_line({"schema_version": SCHEMA_VERSION,
                        "error": {"code": error_code(exc), "message": str(exc)},
                        "type": type(exc).__name__}, out)  # type: deprecated, use error.code
        return exc.exit_code
    except Exception as exc:  # a bug, not a user error: say so, with the trace
        bar.close()
        print(f"importer: internal error (please report): {exc!r}", file=sys.stderr)
        traceback.print_exc()
        return 1
    finally:
        stop.restore()


def _run_command(args: argparse.Namespace, progress: Progress, cancel: threading.Event,
                 bar: ProgressReporter) -> dict[str, Any]:
    config = _config_from_args(args)
    if args.command == "inspect":
        return inspect_source(config)
    if args.command == "verify":
        return verify_import(config, progress, cancel)
    if args.output_format != "raw" or args.compress:
        return _import_as(args, config, bar, cancel).as_dict()
    return run_import(config, progress, cancel).as_dict()


def _exit_status(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """3: inspect --fail-unsafe found an unsafe image; 1: verify found a difference."""
    if args.command == "inspect" and args.fail_unsafe and not result.get("safe", True):
        return 3
    if args.command == "verify" and not result["identical"]:
        if args.quiet and args.output == "text":
            print(f"importer: {result['reason']}", file=sys.stderr)
        return 1
    return 0


def _config_from_args(args: argparse.Namespace) -> ImportConfig:
    """The import's settings from the command line, through the one validator, with the CLI's
    own rules: a DEST is never clobbered without --force, sizes are whole sectors."""
    if args.command == "import" and not args.dest:
        raise ConfigError("DEST is empty: name a file, a block device, or - for standard "
                          "output")
    config = build_config(
        source=args.source,
        dest=getattr(args, "dest", ""),
        content_type=getattr(args, "content_type", "kubevirt"),
        image_size=getattr(args, "image_size", None),
        preallocation=getattr(args, "preallocation", False),
        checksum=getattr(args, "checksum", None),
        checksum_file=getattr(args, "checksum_file", None),
        scratch_dir=getattr(args, "scratch_dir", None),
        username=args.username,
        password_file=args.password_file,
        headers=args.header,
        header_files=args.header_file,
        ca_dir=args.ca_dir,
        ca_file=args.ca_file,
        insecure=args.insecure,
        cache_mode=getattr(args, "cache_mode", None),
        connections=getattr(args, "connections", 4),
        max_retries=args.retries,
        retry_time=args.retry_time,
        read_timeout=args.read_timeout,
        connect_timeout=args.connect_timeout,
        low_speed_limit=args.low_speed_limit,
        low_speed_time=args.low_speed_time,
        source_kind=args.source_kind,
        # the registry's options need the environment (its credentials file): the
        # validator builds them; every other kind builds its own from its flags
        registry_arch=args.registry_arch,
        registry_auth_file=args.registry_auth_file,
        options=_kind_options(args),
        converter=args.converter,
        input_format=args.input_format,
        ova_disk=args.ova_disk,
    )
    _size_warnings(getattr(args, "image_size", None), config)
    if args.command == "import":
        _output_warnings(args, config)
    if args.command == "import" and not args.force and str(config.dest) != "-":
        _refuse_to_clobber(config)
        # an archive's files replace what the directory holds only with --force, as a
        # file DEST is (checked when the members are known, before anything is moved)
        config = dataclasses.replace(config, replace_existing=False)
    if config.image_size and config.image_size % 512:  # whole sectors, as qemu-img does
        config = dataclasses.replace(config, image_size=-(-config.image_size // 512) * 512)
    return config


def _kind_options(args: argparse.Namespace) -> Any:
    """The chosen kind's options from its own flags (sources/kinds.py), or None (the kind has
    none, or the source names no kind yet: the validator reports that)."""
    try:
        kind = kind_for(args.source, args.source_kind)
    except (KeyError, StopIteration, ValueError):
        return None
    if kind.cli is None or kind.cli.options is None:
        return None
    return kind.cli.options(lambda name: getattr(args, name, None))


def _human(key: str, value: Any) -> str:
    """A value as a person reads it: sizes in units and bytes, lists and maps as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("size"):
        from .quantity import format_bytes

        return f"{format_bytes(value)} ({value} bytes)"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _print_result(command: str, result: dict[str, Any], output: str,
                  out: Any = None) -> None:
    out = out or sys.stdout
    if output == "json":
        _json_line(result, out)
        return
    if command == "verify":
        print(f"{result['destination']}: " + (
            f"identical to what {result['source']} gives ({result['compared_bytes']} bytes "
            f"compared, {result['bytes_read']} read from the source)" if result["identical"]
            else result["reason"]), file=out)
        return
    if command == "inspect":
        for k, v in result.items():
            if k == "schema_version":
                continue
            print(f"{k:16} {_human(k, v)}", file=out)
        return
    secs = result["duration_seconds"] or 1e-9
    print(
        f"imported {result['format']}"
        f"{' (' + '+'.join(result['compression']) + ')' if result['compression'] else ''} "
        f"into {result['destination']}"
        f"{' as ' + result['output_format'] if result['output_format'] != 'raw' else ''}"
        f" by the {result['plan']} plan"
        f"{' (' + result['converter'] + ')' if result['converter'] else ''}: "
        f"{result['bytes_read'] / 2**20:.1f} MiB read in {secs:.1f} s "
        f"({result['bytes_read'] / 2**20 / secs:.1f} MiB/s), "
        f"virtual size {result['virtual_size']}, {result['zero_bytes_skipped'] / 2**20:.1f} MiB "
        "of zeros skipped", file=out)
