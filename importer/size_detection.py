"""cdi-image-size-detection (docs/pod-contract.md 9): the size-detection pod of host-assisted
clones runs it on the source PVC's image and reads the virtual size from the termination
message.

    cdi-image-size-detection -image-path /data/disk.img [-scheme file://]

Exit codes as CDI's: 0 the size (decimal) written; 1 bad arguments; 2 not a valid image;
3 invalid path; 4 the termination message cannot be written. Unlike CDI, which runs plain
`qemu-img info` on whatever it finds, the image is first inspected by the importer's header
checks (a backing file or an external data file is refused) and qemu-img runs with -f and
under resource limits."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import ImporterError
from .formats.detect import detect
from .goflags import parse_go_flags, wants_help
from .podconfig import early_settings
from .sinks.qemu import QemuInput, qemu_info
from .sources.file import FileSource
from .termination import write_termination_message

__all__ = ["main"]

log = logging.getLogger("importer.size_detection")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print(f"usage: cdi-image-size-detection -image-path PATH [-scheme file://]\n\n"
              f"{__doc__.split(chr(10) + chr(10))[0]}")
        return 0
    flags = parse_go_flags(args, ("image-path", "scheme"), ("alsologtostderr",))
    if flags is None or not flags.get("image-path"):
        log.error("One or more mandatory parameters are missing: -image-path PATH "
                  "[-scheme file://]")
        return 1
    url = urlsplit(flags.get("scheme", "file://") + flags["image-path"])
    if url.scheme != "file" or not url.path:
        log.error("invalid image path %r: only file:// images can be measured", flags["image-path"])
        return 3
    path = Path(unquote(url.path))
    try:
        src = FileSource(path)
    except ImporterError as exc:
        log.error("invalid image path %s: %s", path, exc)
        return 3
    try:
        with src.open_stream(0) as stream:
            det = detect(stream, size=src.info().size, source_read_at=src.read_at)
        if det.codecs:
            raise ImporterError(f"the image is {'+'.join(det.codecs)}-compressed; a PVC holds "
                                "an uncompressed image")
        driver = det.info.qemu_driver if det.info.needs_conversion else "raw"  # raw, iso
        size = int(qemu_info(QemuInput.local_file(driver, str(path)))["virtual-size"])  # type: ignore[call-overload]
    except ImporterError as exc:
        log.error("%s is not a valid image: %s", path, exc)
        return 2
    finally:
        src.close()
    if not write_termination_message(early_settings(os.environ).termination_log, str(size)):
        return 4
    log.info("virtual size of %s: %d", path, size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
