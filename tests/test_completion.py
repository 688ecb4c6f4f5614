"""Shell completion (issue 24 item 9): generated from the CLI's argparse definitions and kept
current, offering the commands, options and choices `--help` shows, in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def test_the_completions_are_generated_from_the_current_options(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_completion.py"), str(tmp_path)],
                   check=True, cwd=ROOT)
    for shell, name in (("bash", "importer"), ("zsh", "_importer")):
        committed = (ROOT / "completions" / shell / name).read_text()
        assert (tmp_path / shell / name).read_text() == committed, (
            f"completions/{shell}/{name} is stale: run .venv/bin/python scripts/gen_completion.py")


def _complete(words: str) -> list[str]:
    """What bash offers after `words` (the last word is the one being completed)."""
    script = ROOT / "completions" / "bash" / "importer"
    program = (f"source {script}\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}}-1))\n"
               "_importer\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    return done.stdout.split()


def test_bash_offers_commands_options_and_choices() -> None:
    assert _complete("importer ''") == ["import", "inspect", "verify", "pod", "upload-server",
                                        "--help", "--version"]
    assert "--checksum-file" in _complete("importer import --che")
    assert _complete("importer import -f q") == ["qcow2"]
    assert _complete("importer inspect --output ''") == ["text", "json"]
    assert set(_complete("importer import --source ''")) >= {"http", "s3", "glance", "vddk"}
    assert _complete("importer import --image-size ''") == []  # a size: no file names
    assert "pyproject.toml" in _complete("importer import --checksum-file py")


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed (scripts/setup.sh "
                    "installs it)")
def test_zsh_reads_its_completion() -> None:
    done = subprocess.run(["zsh", "-n", str(ROOT / "completions" / "zsh" / "_importer")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (ROOT / "completions" / "zsh" / "_importer").read_text()
    assert "--openstack-secret" in text and "(raw qcow2 vmdk vdi vhd vhdx iso ova)" in text
