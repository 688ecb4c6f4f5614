"""The oVirt world of these tests: one real imageio daemon and one fake engine per session,
disks generated with qemu-img; each test starts from a quiet engine (knobs reset, log empty)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import (
    Disk,
    FakeEngine,
    ImageioDaemon,
    Pki,
    WarmChain,
    make_cold_disk,
    make_warm_chain,
    ovirt_world,
)


@dataclasses.dataclass
class Ovirt:
    daemon: ImageioDaemon
    engine: FakeEngine
    pki: Pki
    cold: Disk
    cold_image: Path
    warm: WarmChain
    password_file: Path

    def cli_args(self, *extra: str) -> list[str]:
        """`importer import --source imageio ENGINE` and the access options."""
        return ["--source", "imageio", self.engine.url, *extra, "--username",
                FakeEngine.USER, "--password-file", str(self.password_file),
                "--ca-dir", str(self.pki.ca_dir)]


@pytest.fixture(scope="session")
def ovirt_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ovirt]:
    work = tmp_path_factory.mktemp("ovirt")
    with ovirt_world(work) as (daemon, engine, pki):
        cold, cold_image = make_cold_disk(work / "cold")
        warm = make_warm_chain(work / "warm")
        engine.add_disk(cold)
        engine.add_disk(warm.disk)
        pw = work / "password"
        pw.write_text(FakeEngine.PASSWORD + "\n")
        yield Ovirt(daemon, engine, pki, cold, cold_image, warm, pw)


@pytest.fixture
def ovirt(ovirt_session: Ovirt) -> Ovirt:
    e = ovirt_session.engine
    e.calls.clear()
    e.transfers.clear()
    e.locked_posts, e.init_polls, e.ticket_timeout = 0, 2, 300
    e.expire_tokens, e.transfer_base, e.final_phase = 0, None, None
    for d in e.disks.values():
        d.status = "ok"
    return ovirt_session
