"""The merged view of disk/ from layer listings, without a registry."""

from __future__ import annotations

import io
import tarfile

import pytest

from importer.errors import FormatError, UnsafeImageError
from importer.sources.oci.layers import DiskView, LayerTar, normalise


def _m(name: str, kind: bytes = tarfile.REGTYPE, size: int = 10) -> tuple[str, tarfile.TarInfo]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size = kind, size
    return normalise(name, "t"), ti


def _view(*layers: list[tuple[str, tarfile.TarInfo]]) -> DiskView:
    """Layers given bottom first, applied top-down as the source does."""
    view = DiskView()
    for i in range(len(layers) - 1, -1, -1):
        view.apply(i + 1, layers[i], "img")
    return view


def test_topmost_wins_and_whiteouts_hide() -> None:
    v = _view([_m("disk/a.img"), _m("disk/b.img")], [_m("disk/.wh.b.img"), _m("./disk/a.img", size=5)])
    disk = v.the_disk("img", 2)
    assert (disk.name, disk.layer, disk.size) == ("a.img", 2, 5)


def test_opaque_directory_and_whiteout_of_disk_itself() -> None:
    assert _view([_m("disk/a.img")], [_m("disk/.wh..wh..opq"), _m("disk/c.img")]
                 ).the_disk("img", 2).name == "c.img"
    assert _view([_m("disk/a.img")], [_m(".wh.disk")], [_m("disk/d.img")]).the_disk("img", 3
                                                                                 ).name == "d.img"


def test_disk_replaced_by_a_file() -> None:
    with pytest.raises(FormatError, match="/disk is a regular file in layer 2, not a directory"):
        _view([_m("disk/a.img")], [_m("disk")]).the_disk("img", 2)


def test_candidate_respects_upper_layers() -> None:
    view = DiskView()
    view.apply(2, [_m("disk/.wh.a.img")], "img")
    path, m = _m("disk/a.img")
    assert view.candidate(m, path, 1) is None
    path, m = _m("disk/b.img")
    assert view.candidate(m, path, 1) is not None


def test_duplicate_in_one_layer() -> None:
    with pytest.raises(FormatError, match="appears twice in layer 1"):
        _view([_m("disk/a.img"), _m("disk/a.img")])


@pytest.mark.parametrize("name", ["disk/../../etc/passwd", "../disk/a.img", "/disk/../../x"])
def test_climbing_names(name: str) -> None:
    with pytest.raises(UnsafeImageError):
        normalise(name, "layer 1")


def test_normalise_strips_dots_and_slashes() -> None:
    assert normalise("./disk//a.img", "t") == "disk/a.img"
    assert normalise("/disk/", "t") == "disk"


class _Dribble(io.RawIOBase):
    """At most 7 bytes a read, as a decoder may return: headers and data must still parse."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(7, len(b)))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_layer_tar_survives_short_reads() -> None:
    out = io.BytesIO()
    payload = bytes(range(256)) * 40
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("disk")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        f = tarfile.TarInfo("disk/" + "long-name-" * 12 + ".img")  # > 100 chars: a PAX header
        f.size = len(payload)
        tf.addfile(f, io.BytesIO(payload))
        tf.addfile(tarfile.TarInfo("etc/hostname"), io.BytesIO(b""))
    lt = LayerTar(_Dribble(out.getvalue()), "layer 1")
    names = []
    for path, m in lt.members():
        names.append(path)
        if m.isreg() and path.startswith("disk/"):
            assert lt.open_member(m).read() == payload
    lt.drain()
    assert names == ["disk", "disk/" + "long-name-" * 12 + ".img", "etc/hostname"]
