"""One TLS context per import, shared by every HTTP stack we use (our http.client connector,
and the SDKs that bring their own: boto3, google-cloud-storage, oras/requests), so a CA
directory or --insecure means the same thing everywhere."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import ssl
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .options import HttpOptions

__all__ = ["ca_bundle_file", "make_ssl_context", "verify_setting"]

log = logging.getLogger(__name__)
_PEM_MARK = "-----BEGIN CERTIFICATE-----"


def make_ssl_context(ca_dirs: list[Path], insecure: bool, ca_pems: tuple[str, ...] = ()
                     ) -> ssl.SSLContext:
    """One context per trust setting for the whole process: several clients of one import (the
    oVirt engine and the imageio daemon; probe and bulk) share it, and loading the store costs
    ~25 ms. An SSLContext may be shared between threads and connections. `ca_pems`: more CA
    certificates as PEM text (an OpenStack secret's cacert)."""
    return _context(tuple(ca_dirs), insecure, ca_pems)


@functools.lru_cache(maxsize=8)
def _context(ca_dirs: tuple[Path, ...], insecure: bool, ca_pems: tuple[str, ...] = ()
             ) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("TLS certificate verification is disabled (--insecure)")
        return ctx
    for ca_dir in ca_dirs:
        _load_dir(ctx, ca_dir)
    for pem in ca_pems:
        try:
            if _PEM_MARK not in pem:
                raise ValueError("no PEM certificate")
            ctx.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            # CDI's words (cmd/openstack-populator), then why
            raise ConfigError("CA certificate is malformed, failed to configure the CA cert "
                              f"pool ({getattr(exc, 'reason', None) or exc})") from exc
    return ctx


def _load_dir(ctx: ssl.SSLContext, ca_dir: Path) -> None:
    loaded = 0
    # Every non-dot file counts, whatever its name (CDI reads only some names, and users trip over it).
    for f in _pem_files(ca_dir):
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


def _pem_files(ca_dir: Path) -> list[Path]:
    if ca_dir.is_file():  # --ca-file: the one file
        return [ca_dir]
    return [f for f in sorted(ca_dir.rglob("*"))
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(ca_dir).parts)]


def ca_bundle_file(ca_dirs: list[Path]) -> str:
    """One PEM bundle file (the system store plus every certificate of the directories), for
    libraries that take a file rather than an SSLContext (boto3, requests). Written once per
    set of directories to a private temporary file, removed at exit."""
    key = tuple(str(d) for d in ca_dirs)
    if key in _BUNDLES:
        return _BUNDLES[key]
    pems = []
    system = ssl.get_default_verify_paths().cafile
    if system and os.path.exists(system):
        pems.append(Path(system).read_text())
    for d in ca_dirs:
        for f in _pem_files(d):
            text = f.read_text(errors="replace")
            if _PEM_MARK in text:
                pems.append(text)
    fd, name = tempfile.mkstemp(prefix="importer-ca-", suffix=".pem")
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(pems))
    atexit.register(_remove, name)
    _BUNDLES[key] = name
    return name


def verify_setting(opts: HttpOptions) -> bool | str:
    """The `verify` value of libraries that take a CA bundle file rather than an SSLContext
    (boto3, requests): False with --insecure, a bundle with CA directories, else True."""
    if opts.insecure:
        # asked for explicitly: urllib3's per-request warning would only repeat it on stderr
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return False
    return ca_bundle_file(opts.ca_dirs) if opts.ca_dirs else True


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_BUNDLES: dict[tuple[str, ...], str] = {}
