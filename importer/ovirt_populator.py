"""ovirt-populator: what CDI's Forklift populator controller runs (from the importer image by
default, OVIRT_POPULATOR_IMAGE) to fill a volume with an oVirt disk for an OvirtVolumePopulator.

CDI's program writes the engine password and CA to files and runs `ovirt-img download-disk`,
reading its JSON progress lines. Ours is the importer's own imageio source on the engine
(sources/imageio.py): the transfer is created, its extents read so zero runs become holes,
data fetched on several connections from the daemon, the transfer finalized, or cancelled on
any failure or signal; the password and the CA stay in memory (no file holds either).
Progress is `kubevirt_cdi_ovirt_progress_total{ownerUID}` on https://:8443/metrics, relative to
the disk's size (CDI's divides by the PVC's size, so a disk smaller than its PVC never showed
more than its share before the final jump to 100)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .populator import run_populator
from .populatorconfig import OVIRT_USAGE, ovirt_job

__all__ = ["METRIC", "main"]

METRIC = "kubevirt_cdi_ovirt_progress"  # exposed as kubevirt_cdi_ovirt_progress_total


def main(argv: Sequence[str] | None = None) -> int:
    return run_populator(argv, usage=OVIRT_USAGE, summary=__doc__.split("\n\n")[0],
                         metric=METRIC, read_job=lambda args: ovirt_job(args, os.environ))


if __name__ == "__main__":
    raise SystemExit(main())
