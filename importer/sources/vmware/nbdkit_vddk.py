"""nbdkit's vddk plugin serving one VMware disk on a unix socket, started as CDI starts it.

Argument order, filters and debug flags are CDI's (docs/pod-contract.md 4.6), so a VDDK
that works under CDI works here, and nbdkit's own vddk documentation applies. The password
reaches nbdkit through an inherited pipe (`password=-N`), never argv or the environment; the
socket and pid file live in a private directory (mode 0700) removed at stop. The log is kept
(the last 1000 lines, password lines hidden) for error messages, and read for what CDI puts in
its termination message: the VDDK version and the ESXi host the disk was opened on.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ...children import ServerChild, run_child
from ...errors import SourceError, SourceUnavailableError

__all__ = ["VddkExport", "VddkPluginArgs"]

log = logging.getLogger(__name__)

# CDI's patterns, on CDI's lines:
#   nbdkit: debug: VMware VixDiskLib (7.0.0) Release build-15832853
#   nbdkit: vddk[1]: debug: DISKLIB-LINK  : Opened 'vpxa-nfcssl://[ds] vm/vm.vmdk@esx12:902' (0xa)
_VERSION = re.compile(r"\((?P<version>.*)\).*build-(?P<build>.*)")
_HOST = re.compile(r"Opened '.*@(?P<host>.*):.*' \(0x")
#: how long nbdkit may take to log in to vCenter and open the disk
START_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class VddkPluginArgs:
    server: str
    user: str
    password: str
    thumbprint: str
    moref: str  # the VM's managed object id
    file: str  # the disk's file: the backing file, or the snapshot's copy of it
    libdir: Path
    plugin: str = "vddk"  # a path: a stand-in plugin (CDI's test hook)
    snapshot: str | None = None  # the snapshot's managed object id
    config: Path | None = None  # VDDK's extra configuration file


class VddkExport:
    def __init__(self, args: VddkPluginArgs) -> None:
        self.version = ""
        self.host = ""
        self._check_plugin(args)
        self._dir = Path(tempfile.mkdtemp(prefix="importer-vddk-"))  # 0700
        self.socket = str(self._dir / "nbd.sock")
        pidfile = self._dir / "nbd.pid"
        argv = ["nbdkit", "--foreground", "--readonly", "--exit-with-parent",
                "-U", self.socket, "--pidfile", str(pidfile),
                "--filter=retry", "--filter=cacheextents", args.plugin,
                f"libdir={args.libdir}", f"server={args.server}", f"user={args.user}",
                "password=-{secret_fd}", f"thumbprint={args.thumbprint}", f"vm=moref={args.moref}"]
        if args.snapshot:
            argv += [f"snapshot={args.snapshot}", "transports=file:nbdssl:nbd"]
        argv += ["--verbose", "-D", "nbdkit.backend.datapath=0", "-D", "vddk.datapath=0",
                 "-D", "vddk.stats=1"]
        if args.config is not None:
            argv.append(f"config={args.config}")
        argv.append(f"file={args.file}")
        log.info("starting nbdkit: %s", " ".join(a for a in argv if "password" not in a))
        self._child = ServerChild(argv, secret=args.password.encode(), on_line=self._line)
        deadline = time.monotonic() + START_TIMEOUT
        while not pidfile.exists():
            if not self._child.running():
                self.stop()
                raise SourceError(f"nbdkit's vddk plugin could not open {args.file}: "
                                  f"{self.failure()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SourceUnavailableError(f"nbdkit did not open {args.file} within "
                                             f"{START_TIMEOUT:.0f} s: {self.failure()}")
            time.sleep(0.02)

    @staticmethod
    def _check_plugin(args: VddkPluginArgs) -> None:
        """CDI's sanity check: the plugin loads with this VDDK library."""
        if not shutil.which("nbdkit"):
            raise SourceError("nbdkit is not installed; the VDDK source needs nbdkit and its vddk "
                              "plugin")
        try:
            r = run_child(["nbdkit", "--dump-plugin", args.plugin, f"libdir={args.libdir}"],
                          timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise SourceError("nbdkit --dump-plugin vddk did not finish in 60 s") from exc
        if r.returncode != 0:
            raise SourceError(f"nbdkit's vddk plugin cannot load the VDDK library in "
                              f"{args.libdir}: {r.message()}; the VDDK (an init image in "
                              "CDI, --vddk-libdir here) must be there")

    def _line(self, line: str) -> None:
        if "VixDiskLib" in line and not self.version:
            m = _VERSION.search(line)
            if m:
                self.version = m.group("version")
                log.info("VDDK version in-use: %s", self.version)
        elif "DISKLIB-LINK" in line and "Opened" in line:
            m = _HOST.search(line)
            if m and m.group("host") != self.host:  # once per connection: logged once
                self.host = m.group("host")
                log.info("VDDK connected to host: %s", self.host)

    def lines(self, n: int = 1000) -> list[str]:
        """The last lines of nbdkit's log, any that mention the password hidden."""
        return ["(a line about the password, hidden)" if "password" in ln.lower() else ln
                for ln in self._child.last_lines(n)]

    def failure(self) -> str:
        errors = [ln for ln in self.lines(50) if "error" in ln.lower()]
        return " | ".join((errors or self.lines(3))[-3:]) or "no message"

    def running(self) -> bool:
        return self._child.running()

    def exited(self, within: float) -> bool:
        """Whether nbdkit has exited, or does within `within` seconds (a dropped connection
        comes a moment before the process is gone)."""
        try:
            self._child.proc.wait(within)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        code = self._child.stop()
        if code not in (0, None, -15):
            log.info("nbdkit exited with %s; its last lines:\n%s", code, "\n".join(self.lines(20)))
        else:
            log.debug("nbdkit's last lines:\n%s", "\n".join(self.lines(20)))
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
