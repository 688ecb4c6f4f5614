"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer), over the same targets and
seeds as tests/fuzz: `scripts/fuzz.sh TARGET [SECONDS]`. A crash leaves its input in
fuzz-artifacts/; add it to REGRESSIONS in tests/fuzz/test_parsers.py with the fix."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import importer.disks
    import importer.formats
    import importer.sinks.archive
    import importer.sources.oci
    import importer.termination  # noqa: F401
    from tests.fuzz.targets import TARGETS, make_seeds


def main() -> None:
    name, argv = sys.argv[1], sys.argv[:1] + sys.argv[2:]
    target = TARGETS[name]
    corpus = Path("fuzz-corpus") / name
    if not corpus.exists():
        corpus.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as d:
            for i, seed in enumerate(make_seeds(Path(d))[name]):
                (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([*argv, str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
