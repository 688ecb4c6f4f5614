"""The fake engine answers what oVirt's own SDK (ovirtsdk4) asks, the way it asks: if the fake
drifted from the real API, the importer's engine client could pass tests against it and fail
against a real engine. This drives the same calls an import makes, through the SDK."""

from __future__ import annotations

import time

import pytest

from .fixtures import Ovirt
from .servers import FakeEngine

sdk = pytest.importorskip("ovirtsdk4", reason="ovirt-engine-sdk-python is not installed "
                                              "(run scripts/setup.sh)")
types = pytest.importorskip("ovirtsdk4.types")


def test_the_sdk_downloads_through_the_fake_engine(ovirt: Ovirt) -> None:
    con = sdk.Connection(url=ovirt.engine.url, username=FakeEngine.USER,
                         password=FakeEngine.PASSWORD, ca_file=str(ovirt.pki.ca_file))
    try:
        system = con.system_service()
        chain = ovirt.warm
        disk = system.disks_service().disk_service(chain.disk.id).get()
        assert (disk.id, disk.provisioned_size, disk.image_id) == (
            chain.disk.id, chain.disk.size, chain.snapshots[-1])
        assert disk.format == types.DiskFormat.COW and disk.status == types.DiskStatus.OK
        sd = disk.storage_domains[0].id
        snaps = system.storage_domains_service().storage_domain_service(sd) \
            .disk_snapshots_service().list()
        assert chain.snapshots[0] in {s.id for s in snaps}
        transfers = system.image_transfers_service()
        tr = transfers.add(types.ImageTransfer(
            snapshot=types.DiskSnapshot(id=chain.snapshots[0]),
            direction=types.ImageTransferDirection.DOWNLOAD, format=types.DiskFormat.RAW,
            inactivity_timeout=60))
        svc = transfers.image_transfer_service(tr.id)
        while tr.phase == types.ImageTransferPhase.INITIALIZING:
            time.sleep(0.1)
            tr = svc.get()
        assert tr.phase == types.ImageTransferPhase.TRANSFERRING
        assert tr.transfer_url.startswith("https://127.0.0.1:")
        svc.extend()
        svc.finalize()
        assert svc.get().phase == types.ImageTransferPhase.FINISHED_SUCCESS
        with pytest.raises(sdk.NotFoundError):
            svc.get()
        with pytest.raises(sdk.NotFoundError):
            system.disks_service().disk_service("no-such-disk").get()
    finally:
        con.close()
    assert ovirt.engine.actions("finalize") == [tr.id]
    assert ovirt.engine.actions("extend") == [tr.id]


def test_the_sdk_sees_a_refused_login(ovirt: Ovirt) -> None:
    con = sdk.Connection(url=ovirt.engine.url, username=FakeEngine.USER, password="wrong",
                         ca_file=str(ovirt.pki.ca_file))
    with pytest.raises(sdk.AuthError):
        con.system_service().disks_service().disk_service(ovirt.cold.id).get()
    con.close()
