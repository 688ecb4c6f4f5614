"""A new kind of source from one module (issue 22): this module registers a toy kind (`toy://NAME`
reads NAME from a directory given by its own flag, `--toy-dir`, or its own pod variable,
`TOY_DIR`) and gets, with no other file changed, its CLI flags and help, its scheme accepted,
its options from both front-ends, its validation in each front-end's words, and an import."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from importer.settings import Front, Problem
from importer.sources import kinds
from importer.sources.kinds import CliSpec, SourceKind

from ..conftest import Images


@dataclass(frozen=True, slots=True)
class ToyOptions:
    directory: Path | None


def _open(config: Any) -> Any:
    from importer.sources.file import FileSource

    name = config.source.removeprefix("toy://")
    return FileSource(config.options.directory / name)


def _flags(group: Any) -> None:
    group.add_argument("--toy-dir", metavar="DIR", help="where toy:// images are")


def _problems(options: Any, _username: str | None, front: Front) -> list[Problem]:
    d = getattr(options, "directory", None)
    if d is None or not d.is_dir():
        return [Problem("toy_dir", f"{front.name('toy_dir')} must name a directory (got {d})")]
    return []


TOY = SourceKind(
    "toy", ("toy",), "toy", ("TOY_DIR",), _open,
    pod_options=lambda env, root: ToyOptions(Path(env["TOY_DIR"]) if env.get("TOY_DIR")
                                             else None),
    cli=CliSpec("toy images (toy://NAME)", _flags,
                lambda get: ToyOptions(Path(get("toy_dir")) if get("toy_dir") else None)),
    problems=_problems, help="an image from the toy directory")


@pytest.fixture
def toy() -> Iterator[SourceKind]:
    kinds.register(TOY)
    try:
        yield TOY
    finally:
        kinds._EXTRA.remove(TOY)


def test_the_toy_kind_gets_flags_help_scheme_options_and_an_import(
        toy: SourceKind, images: Images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from importer.cli import _parser, main

    imp = _parser()._subparsers._group_actions[0].choices["import"]  # type: ignore[union-attr]
    assert "--toy-dir" in imp.format_help() and "toy images (toy://NAME)" in imp.format_help()
    assert "toy" in kinds.supported_schemes() and "toy" in kinds.selectable_names()
    dest = tmp_path / "d.img"
    code = main(["import", "toy://disk.qcow2", str(dest), "--toy-dir", str(images.dir),
                 "-o", "json", "--progress", "none"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["format"] == "qcow2" and dest.stat().st_size == result["virtual_size"]
    # its validation, naming its flag as the CLI spells it with no table entry for it
    code = main(["import", "toy://disk.qcow2", str(tmp_path / "e.img"), "--progress", "none"])
    assert code == 2 and "--toy-dir must name a directory" in capsys.readouterr().err


def test_the_toy_kind_in_the_pod_reads_its_own_variable(toy: SourceKind, images: Images,
                                                        tmp_path: Path) -> None:
    from importer.podconfig import read_pod_environment

    (tmp_path / "data").mkdir()
    env = {"IMPORTER_SOURCE": "toy", "IMPORTER_ENDPOINT": "toy://disk.raw",
           "TOY_DIR": str(images.dir), "IMPORTER_FS_ROOT": str(tmp_path),
           "IMPORTER_IMAGE_SIZE": "64Mi"}
    _settings, config = read_pod_environment(env)
    assert config is not None and config.options == ToyOptions(images.dir)
    with pytest.raises(Exception, match="toy_dir must name a directory"):
        read_pod_environment({**env, "TOY_DIR": str(tmp_path / "missing")})


def test_a_kind_cannot_take_a_name_or_scheme_already_taken(toy: SourceKind) -> None:
    with pytest.raises(ValueError, match="taken"):
        kinds.register(TOY)
