"""Archive extraction: what a good tar yields, and hostile tars that must not write outside the
directory, create links or devices, or leave a half-extracted destination."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from importer.config import build_config
from importer.engine import run_import
from importer.errors import (
    ChecksumMismatchError,
    FormatError,
    TargetTooSmallError,
    UnsafeImageError,
)

from ..conftest import Nginx


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def reg(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    ti.uid = ti.gid = 0
    return ti


def special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti


def extract(src: Path, dest: Path, **kw: object):  # type: ignore[no-untyped-def]
    return run_import(build_config(source=str(src), dest=str(dest), content_type="archive", **kw))  # type: ignore[arg-type]


def good_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    d = reg("dir/")
    d.type = tarfile.DIRTYPE
    d.mode = 0o755
    return [(d, None), (reg("dir/a.txt"), b"alpha\n"), (reg("b.bin", 0o4755), os.urandom(300_000)),
            (reg("./dir/sub/c"), b"c" * 10)]


@pytest.mark.parametrize("codec", ["none", "gz", "xz", "zst"])
def test_extracts_regular_files_and_directories(tmp_path: Path, codec: str) -> None:
    tar = make_tar(tmp_path / "a.tar", good_members())
    data = tar.read_bytes()
    blob = {"none": data, "gz": __import__("gzip").compress(data), "xz": lzma.compress(data),
            "zst": zstandard.ZstdCompressor().compress(data)}[codec]
    src = tmp_path / "src.bin"
    src.write_bytes(blob)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "lost+found").mkdir()  # pre-existing content stays
    result = extract(src, dest, checksum=f"sha256:{hashlib.sha256(blob).hexdigest()}")
    assert result.path == "archive" and result.details["files"] == 3
    assert (dest / "dir/a.txt").read_bytes() == b"alpha\n"
    assert (dest / "dir/sub/c").read_bytes() == b"c" * 10
    assert (dest / "b.bin").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert sorted(p.name for p in dest.iterdir()) == ["b.bin", "dir", "lost+found"]


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "dir/../../evil", "a/../../evil"])
def test_paths_escaping_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    tar = make_tar(tmp_path / "a.tar", [(reg("ok.txt"), b"fine"), (reg(name), b"pwned")])
    dest = tmp_path / "sandbox" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeImageError):
        extract(tar, dest)
    assert list(dest.iterdir()) == []  # not even ok.txt: all or nothing
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sandbox" / "evil").exists()


def test_links_are_kept_as_gnu_tar_keeps_them_and_devices_skipped(tmp_path: Path) -> None:
    """Symbolic links are created as they are (absolute or relative, never followed); a hard
    link joins a file extracted before; devices and FIFOs are skipped (issue 21: an archive with
    links came out incomplete, reported complete)."""
    members = [
        (reg("real.txt", 0o640), b"ok"),
        (special("abs-link", tarfile.SYMTYPE, "/etc/passwd"), None),
        (special("rel-link", tarfile.SYMTYPE, "real.txt"), None),
        (special("dangling", tarfile.SYMTYPE, "../../nowhere"), None),
        (special("hard", tarfile.LNKTYPE, "real.txt"), None),
        (special("dev", tarfile.CHRTYPE), None),
        (special("fifo", tarfile.FIFOTYPE), None),
    ]
    tar = make_tar(tmp_path / "a.tar", members)
    dest = tmp_path / "out"
    result = extract(tar, dest)
    assert result.details == {"files": 1, "directories": 0, "links": 4, "skipped": 2}
    assert os.readlink(dest / "abs-link") == "/etc/passwd"
    assert os.readlink(dest / "rel-link") == "real.txt" and (dest / "rel-link").read_text() == "ok"
    assert os.readlink(dest / "dangling") == "../../nowhere"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "real.txt").st_ino
    assert (dest / "real.txt").stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in dest.iterdir()) == ["abs-link", "dangling", "hard",
                                                      "real.txt", "rel-link"]


@pytest.mark.parametrize("members", [
    # the classic two-step: a symlink, then a file written "through" it
    [(special("escape", tarfile.SYMTYPE, "OUTSIDE"), None), (reg("escape/pwned"), b"x")],
    # a directory through a symlink
    [(special("escape", tarfile.SYMTYPE, "OUTSIDE"), None), (reg("escape/sub/pwned"), b"x")],
])
def test_nothing_is_written_through_a_link_of_the_archive(tmp_path: Path,
                                                          members: list[tuple[tarfile.TarInfo,
                                                                              bytes | None]]
                                                          ) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members[0][0].linkname = str(outside)
    tar = make_tar(tmp_path / "a.tar", [(reg("first.txt"), b"1"), *members])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeImageError, match="passes through the symbolic link 'escape'"):
        extract(tar, dest)
    assert list(outside.iterdir()) == [] and list(dest.iterdir()) == []


@pytest.mark.parametrize(("target", "words"), [
    ("/etc/passwd", "is a hard link to '/etc/passwd'"),
    ("later.txt", "not a file extracted before it"),
    ("../x", "is a hard link to '../x'"),
])
def test_a_hard_link_only_joins_a_file_of_the_archive(tmp_path: Path, target: str,
                                                      words: str) -> None:
    tar = make_tar(tmp_path / "a.tar", [(special("hard", tarfile.LNKTYPE, target), None),
                                        (reg("later.txt"), b"x")])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeImageError, match=words):
        extract(tar, dest)
    assert not dest.exists()


def test_directory_and_file_modes_are_kept_without_special_bits(tmp_path: Path) -> None:
    d = reg("ro/")
    d.type = tarfile.DIRTYPE
    d.mode = 0o555  # read-only: its member must still be written, its mode set last
    private = reg("private/")
    private.type = tarfile.DIRTYPE
    private.mode = 0o700
    tar = make_tar(tmp_path / "a.tar", [(d, None), (reg("ro/f", 0o4755), b"x"),
                                        (private, None), (reg("private/k", 0o600), b"k")])
    dest = tmp_path / "out"
    extract(tar, dest)
    assert (dest / "ro").stat().st_mode & 0o7777 == 0o555
    assert (dest / "ro" / "f").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert (dest / "private").stat().st_mode & 0o7777 == 0o700
    assert (dest / "private" / "k").read_text() == "k"
    (dest / "ro").chmod(0o755)  # let pytest clean up


def test_not_a_tar_and_checksum_mismatch_leave_destination_unchanged(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="needs a tar archive"):
        extract(raw, dest)
    tar = make_tar(tmp_path / "a.tar", good_members())
    with pytest.raises(ChecksumMismatchError):
        extract(tar, dest, checksum="sha1:" + "0" * 40)
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_archive_over_http(nginx: Nginx, tmp_path: Path) -> None:
    make_tar(nginx.www / "tree.tar", good_members())
    xz = lzma.compress((nginx.www / "tree.tar").read_bytes())
    (nginx.www / "tree.tar.xz").write_bytes(xz)
    result = run_import(build_config(source=nginx.url("tree.tar.xz"), dest=str(tmp_path / "o"),
                                     content_type="archive"))
    assert result.details["files"] == 3 and (tmp_path / "o/dir/a.txt").exists()


# ------------------------------------------------------------------ issue 9, item 7


def test_existing_symlink_and_fifo_in_the_destination_are_never_opened(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (dest / "link").symlink_to(victim)
    os.mkfifo(dest / "fifo")  # opening it would block forever
    src = make_tar(tmp_path / "a.tar", good_members())
    result = extract(src, dest)
    assert result.details["files"] == 3
    assert (dest / "link").is_symlink() and victim.read_bytes() == b"precious"
    assert (dest / "fifo").exists() and (dest / "dir" / "a.txt").read_bytes() == b"alpha\n"


def test_a_name_over_name_max_is_a_clean_error_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "new-dir"  # does not exist yet: created, then removed again
    d = reg("x" * 300 + "/")
    d.type = tarfile.DIRTYPE
    src = make_tar(tmp_path / "a.tar", [(reg("first"), b"1"), (d, None)])
    with pytest.raises(FormatError, match="longer than the file system allows"):
        extract(src, dest)
    assert not dest.exists()


def test_zero_runs_stay_holes(tmp_path: Path) -> None:
    data = b"head" + bytes(8 << 20) + b"tail"
    src = make_tar(tmp_path / "a.tar", [(reg("sparse.img"), data)])
    extract(src, tmp_path / "out")
    out = tmp_path / "out" / "sparse.img"
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 < 1 << 20


def test_archive_larger_than_the_size_limit_fails_before_writing(tmp_path: Path) -> None:
    src = make_tar(tmp_path / "a.tar", [(reg("one"), os.urandom(600 << 10)),
                                        (reg("two"), os.urandom(600 << 10))])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "kept").write_bytes(b"old")
    with pytest.raises(TargetTooSmallError, match="larger than the reported available"):
        extract(src, dest, image_size="1Mi")
    assert sorted(p.name for p in dest.iterdir()) == ["kept"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_archive_larger_than_the_free_space_fails_before_filling_it(tmp_path: Path) -> None:
    import subprocess

    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dest)], check=True)
    try:
        (dest / "kept").write_bytes(b"old")
        src = make_tar(tmp_path / "a.tar", [(reg("one"), os.urandom(600 << 10)),
                                            (reg("two"), os.urandom(600 << 10))])
        with pytest.raises(TargetTooSmallError, match="larger than the reported available"):
            extract(src, dest)
        assert sorted(p.name for p in dest.iterdir()) == ["kept"]
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def test_replacing_files_in_an_existing_directory_needs_force(tmp_path: Path) -> None:
    """The same rule as a file DEST (issue 19, item 6): through the CLI, members that would
    replace what the directory holds need --force; new files and merged directories do not."""
    from ..conftest import importer_cli

    tar = make_tar(tmp_path / "a.tar", good_members())
    dest = tmp_path / "out"
    (dest / "dir").mkdir(parents=True)
    (dest / "keep.txt").write_bytes(b"mine")
    r = importer_cli("import", tar, dest, "--content-type", "archive")
    assert r.returncode == 0, r.stderr  # nothing replaced: dir/ merges, the rest is new
    assert (dest / "keep.txt").read_bytes() == b"mine"
    (dest / "dir" / "a.txt").write_bytes(b"changed by the user\n")
    r = importer_cli("import", tar, dest, "--content-type", "archive")
    assert r.returncode == 1 and "already holds b.bin, dir/a.txt, dir/sub/c" in r.stderr, r.stderr
    assert "--force" in r.stderr and "Traceback" not in r.stderr
    assert (dest / "dir" / "a.txt").read_bytes() == b"changed by the user\n"
    assert not [p for p in dest.iterdir() if p.name.startswith(".importer")]
    r = importer_cli("import", tar, dest, "--content-type", "archive", "--force")
    assert r.returncode == 0, r.stderr
    assert (dest / "dir" / "a.txt").read_bytes() == b"alpha\n"
