"""One TLS context per import, shared by every HTTP stack we use (httpx for probing,
http.client for bulk data), so a CA directory or --insecure means the same thing everywhere."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from ..errors import ConfigError

__all__ = ["make_ssl_context"]

log = logging.getLogger(__name__)
_PEM_MARK = "-----BEGIN CERTIFICATE-----"


def make_ssl_context(ca_dirs: list[Path], insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("TLS certificate verification is disabled (--insecure)")
        return ctx
    for ca_dir in ca_dirs:
        _load_dir(ctx, ca_dir)
    return ctx


def _load_dir(ctx: ssl.SSLContext, ca_dir: Path) -> None:
    loaded = 0
    # Every non-dot file counts, whatever its name (CDI read only some names: user-needs 13).
    for f in sorted(ca_dir.rglob("*")):
        if any(p.startswith(".") for p in f.relative_to(ca_dir).parts) or not f.is_file():
            continue
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"cannot read CA file {f}: {exc.strerror}") from exc
        if _PEM_MARK not in text:
            log.warning("CA directory: %s holds no PEM certificate; ignored", f)
            continue
        try:
            ctx.load_verify_locations(cadata=text)
        except ssl.SSLError as exc:
            raise ConfigError(f"CA file {f} holds an invalid certificate: {exc.reason}") from exc
        loaded += 1
    log.info("trusting %d CA file(s) from %s in addition to the system store", loaded, ca_dir)
