"""Writes docs/importer.1 from the CLI's argparse definitions (argparse-manpage), so the man
page, `--help` and the README (held by tests/test_docs.py) say the same thing. The sections
argparse does not know (exit status, environment, examples) come from EXTRA below; the pod's
environment from `importer pod --help`'s own text.

Run: .venv/bin/python scripts/gen_manpage.py [OUT]   (default docs/importer.1)

The page is dated today (UTC), or SOURCE_DATE_EPOCH when set (the test regenerates it with the
committed page's date, so the comparison is exact).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXTRA = r"""
[EXIT STATUS]
.TP
.B 0
success
.TP
.B 1
the import failed; the message says what, where and what to do, and DEST is unchanged
.TP
.B 2
a usage or configuration error
.TP
.B 3
\fBinspect \-\-fail\-unsafe\fR found an unsafe image
.TP
.B 128+N
stopped by signal N (143 for SIGTERM)

[ENVIRONMENT]
.TP
.B http_proxy, https_proxy, no_proxy
proxies for HTTP(S), S3 and GCS (loopback is never proxied)
.TP
.B IMPORTER_PASSWORD
the password when \fB\-\-password\-file\fR is not given
.TP
.B REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, DOCKER_CONFIG
where registry credentials are looked for (as podman and docker look)
.TP
.B AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...
the AWS credential chain, when \fB\-\-username\fR is not given for S3
.TP
.B GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST
Google's default credentials and a GCS emulator
.PP
\fBimporter pod\fR (CDI's importer pod) reads CDI's environment instead of options:
.nf
@POD_HELP@
.fi

[EXAMPLES]
.nf
importer import https://example.org/fedora.qcow2.xz /dev/loop3
importer import disk.vmdk disk.qcow2 \-O qcow2 \-c
importer import docker://quay.io/containerdisks/fedora:41 disk.img
curl \-s https://example.org/disk.raw.gz | importer import \- disk.img
importer inspect https://example.org/disk.qcow2 \-o json \-\-fail\-unsafe
.fi

[SEE ALSO]
.BR qemu\-img (1),
.BR skopeo (1),
.BR virtctl (1).
The README of the importer project (usage per source, the JSON result, troubleshooting).
"""


def _roff_line(line: str) -> str:
    """A line of plain text inside the include file: a line starting with / or [ would open
    a section of argparse-manpage's include format (\\& is roff's zero-width guard)."""
    if not line.strip():
        return ".sp"
    line = line.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + line if line[0] in "/[." else line


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "importer.1"
    from importer import __version__
    from importer.pod import pod_help

    pod = "\n".join(_roff_line(line) for line in pod_help().splitlines())
    with tempfile.NamedTemporaryFile("w", suffix=".man", delete=False) as extra:
        extra.write(EXTRA.strip().replace("@POD_HELP@", pod) + "\n")
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or str(int(time.time()))
    env = {**os.environ, "COLUMNS": "80", "SOURCE_DATE_EPOCH": epoch}  # the same bytes anywhere
    try:
        subprocess.run(
            [str(Path(sys.executable).parent / "argparse-manpage"), "--module", "importer.cli",
             "--function", "_parser", "--prog", "importer", "--project-name", "importer",
             "--version", __version__, "--manual-title", "importer manual",
             "--description", "import virtual-machine disk images into files and block devices",
             "--include", extra.name, "--output", str(out)],
            check=True, env=env, cwd=ROOT)
    finally:
        os.unlink(extra.name)
    # argparse-manpage's last OPTIONS section holds only the program's own (--version): say
    # where every other option is
    page = out.read_text()
    head, sep, tail = page.rpartition(".SH OPTIONS\n")
    if sep:
        page = (head + sep + "Every option of \\fBimport\\fR and \\fBinspect\\fR is listed "
                "above, under the command's OPTIONS, PLAN and SOURCE ACCESS sections and one "
                "section for each kind of source that has options of its own.\n" + tail)
        out.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
