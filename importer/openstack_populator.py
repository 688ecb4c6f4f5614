"""openstack-populator: what CDI's Forklift populator controller runs from the importer image to
fill a volume with an OpenStack Glance image for an OpenstackVolumePopulator.

CDI's program logs in to Keystone with gophercloud and copies the image's bytes into the volume
as they are, on one connection, with no checksum. Ours is the importer's Glance source
(sources/glance.py) on the engine: the image's record is read first (it must be active; its
size and multihash come from there), the bytes are fetched with ranged GETs on several
connections where Glance offers ranges, zero runs become holes, a qcow2 or other image format
is converted to the raw disk KubeVirt reads, and the record's checksum is verified whenever the
bytes are read in order. Progress is `kubevirt_cdi_openstack_populator_progress_total{ownerUID}`
on https://:8443/metrics, relative to the image's size (CDI's divides by the PVC's size)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .populator import run_populator
from .populatorconfig import OPENSTACK_USAGE, openstack_job

__all__ = ["METRIC", "main"]

#: exposed as kubevirt_cdi_openstack_populator_progress_total
METRIC = "kubevirt_cdi_openstack_populator_progress"


def main(argv: Sequence[str] | None = None) -> int:
    return run_populator(argv, usage=OPENSTACK_USAGE, summary=__doc__.split("\n\n")[0],
                         metric=METRIC, read_job=lambda args: openstack_job(args, os.environ))


if __name__ == "__main__":
    raise SystemExit(main())
