"""The documents users read say what the code does: the man page is the one generated from
the CLI's argparse definitions, and every document the README or the code points at is in the
repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_the_man_page_is_generated_from_the_current_options(tmp_path: Path) -> None:
    import datetime
    import os
    import re

    fresh = tmp_path / "importer.1"
    committed = (ROOT / "docs" / "importer.1").read_text()
    dated = re.search(r'^\.TH IMPORTER "1" "(\d{4})\\-(\d\d)\\-(\d\d)"', committed, re.M)
    assert dated and dated.group(1) != "1970", "the page carries the day it was made"
    day = datetime.datetime(*map(int, dated.groups()), 12, tzinfo=datetime.UTC)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_manpage.py"), str(fresh)],
                   check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "SOURCE_DATE_EPOCH": str(int(day.timestamp()))})
    assert fresh.read_text() == committed, (
        "docs/importer.1 is stale: run .venv/bin/python scripts/gen_manpage.py")
    for option in ("--output-format", "--compress", "--fail-unsafe", "--authfile",
                   "IMPORTER_SOURCE", "EXIT STATUS"):
        assert option.replace("-", "\\-") in committed or option in committed, option


def test_every_document_pointed_at_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\b(docs/[\w./-]+\.(?:md|1|yaml))", readme))
    code = [p for d in ("importer", "tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py")]
    code += [ROOT / "Containerfile"]
    for path in code:
        named |= set(re.findall(r"\b(docs/[\w./-]+\.(?:md|1|yaml))", path.read_text()))
    assert named, "the README names its documents"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"documents named but not in the repository: {missing}"
    # the project's private notes are not shipped: nothing may send a reader to them
    for path in [ROOT / "README.md", *code]:
        if path == Path(__file__):
            continue
        text = path.read_text()
        for gone in ("cdi-contract.md", "user-needs", "test-servers.md", "design-notes"):
            assert gone not in text, f"{path.relative_to(ROOT)} points at {gone}"
