"""The one-line answer to a source kind whose SDK is not installed, worded for how this
importer was installed: pipx or pip, from the package index or from a clone (pip records the
clone's path in the distribution's direct_url.json, PEP 610)."""

from __future__ import annotations

import json
import sys
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = ["install_hint", "needs_extra"]


def install_hint(extra: str) -> str:
    """The command that adds `extra` to this installation."""
    from importlib import metadata

    target = f"importer[{extra}]"
    try:
        direct = metadata.distribution("importer").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    if direct:
        try:
            url = str(json.loads(direct).get("url", ""))
        except ValueError:
            url = ""
        if url.startswith("file://"):  # installed from a clone: name the clone
            target = f"{unquote(urlsplit(url).path)}[{extra}]"
    if "/pipx/venvs/" in sys.prefix:
        return f"pipx install --force '{target}'"
    return f"pip install '{target}'"


def needs_extra(extra: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"the {extra} source needs {exc.name or 'a library'} (not installed): "
                       f"{install_hint(extra)} (or importer[all] for every source)")
