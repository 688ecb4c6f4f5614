"""The upload server's test fixtures: one set of certificates per module, a pod per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Certs, UploadPod, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("upload-certs"))


@pytest.fixture
def pod(tmp_path: Path, certs: Certs) -> Iterator[UploadPod]:
    for d in ("data", "dev"):
        (tmp_path / d).mkdir()
    p = UploadPod(tmp_path, certs)
    yield p
    p.stop()
