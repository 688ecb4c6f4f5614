from __future__ import annotations

import json

import pytest

from importer.errors import FormatError, SourceNotFoundError
from importer.sources.oci.digest import Digest
from importer.sources.oci.manifest import (
    Descriptor,
    index_entries,
    kubevirt_labels,
    media_type_of,
    select_platform,
)


def test_labels_follow_cdis_mapping() -> None:
    assert kubevirt_labels([
        "PATH=/bin",
        "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small",
        "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora",
        "KUBEVIRT_IO_OS=linux",
        "A_B_KUBEVIRT_IO_SOME_THING=x=y",
    ]) == {
        "instancetype.kubevirt.io/default-instancetype": "u1.small",
        "instancetype.kubevirt.io/default-preference": "fedora",
        "kubevirt.io/os": "linux",
        "a.b.kubevirt.io/some-thing": "x=y",
    }


def _desc(arch: str, os: str = "linux", mt: str = "application/vnd.oci.image.manifest.v1+json"
          ) -> dict[str, object]:
    return {"mediaType": mt, "digest": str(Digest.of(arch.encode())), "size": 10,
            "platform": {"architecture": arch, "os": os}}


def test_platform_selection_skips_attestations_and_other_systems() -> None:
    data = json.dumps({"manifests": [_desc("unknown", "unknown"), _desc("amd64", "windows"),
                                     _desc("arm64"), _desc("amd64")]}).encode()
    entries = index_entries(data, "idx")
    assert select_platform(entries, "amd64", "idx").platform == {"architecture": "amd64",
                                                                 "os": "linux"}
    with pytest.raises(SourceNotFoundError, match=r"linux/s390x \(it has: linux/amd64, "
                                                  r"linux/arm64, unknown/unknown, windows/amd64"):
        select_platform(entries, "s390x", "idx")


def test_schema1_and_artifacts_are_refused_clearly() -> None:
    with pytest.raises(FormatError, match="schema 1"):
        media_type_of(b'{"schemaVersion": 1, "fsLayers": []}', "", "m")
    with pytest.raises(FormatError, match="not an image manifest"):
        media_type_of(b'{"mediaType": "application/vnd.cncf.helm.chart"}', "", "m")


def test_descriptor_needs_a_size_and_a_valid_digest() -> None:
    from importer.errors import SourceContentError

    with pytest.raises(SourceContentError, match="no valid size"):
        Descriptor.parse({"digest": "sha256:" + "0" * 64}, "d")
    with pytest.raises(SourceContentError, match="not a valid digest"):
        Descriptor.parse({"digest": "md5:abc", "size": 1}, "d")
