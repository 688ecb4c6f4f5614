"""The OpenStack of these tests: one Keystone and one Glance per session (servers.py), with a
qcow2 and a raw image uploaded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from ...conftest import Images
from .servers import OpenStack, openstack_world


@dataclasses.dataclass
class Glance:
    cloud: OpenStack
    qcow2_id: str
    raw_id: str


@pytest.fixture(scope="session")
def glance(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glance]:
    with openstack_world(tmp_path_factory.mktemp("openstack")) as cloud:
        yield Glance(cloud, cloud.upload(images["disk.qcow2"], "qcow2"),
                     cloud.upload(images.raw, "raw"))
