"""Go's flag syntax, which CDI's controller uses to start its programs: `-name value`,
`-name=value`, `--name value`, `--name=value`; a boolean flag takes no value unless `=` gives
one. Written by hand because argparse rejects Go's single-dash long names with `=` in some
spellings and would print its own usage text where CDI's programs print theirs."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["parse_go_bool", "parse_go_flags", "wants_help"]


def parse_go_flags(argv: Sequence[str], names: Collection[str],
                   booleans: Collection[str] = ()) -> dict[str, str] | None:
    """The flags given, by name; None when an argument is not one of `names` (or `booleans`),
    is not a flag at all, or lacks its value."""
    out: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if not arg.startswith("-") or arg in ("-", "--"):
            return None
        name, eq, value = arg.lstrip("-").partition("=")
        if name in booleans:
            out[name] = value if eq else "true"
            continue
        if name not in names:
            return None
        if not eq:
            nxt = next(it, None)
            if nxt is None:
                return None
            value = nxt
        out[name] = value
    return out


def wants_help(argv: Sequence[str]) -> bool:
    """-h, -help, --help: Go's flag package answers these with the usage."""
    return any(a.startswith("-") and a.lstrip("-") in ("help", "h") for a in argv)


def parse_go_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool, which CDI's programs use for their boolean variables; None for
    anything else."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
