"""`cdi-cloner`: the source side of a host-assisted clone (docs/pod-contract.md 4.9), with
`cloner_startup.sh`'s part done here: the byte count, the tar of the mount point's entries.

The body is the Snappy framing format (formats/snappy_framed.py) of either the raw block device
or a tar of the mounted volume's top-level entries except `lost+found` (sparse unless
preallocating; an empty volume gives an empty archive), POSTed with chunked encoding over mTLS
to the upload server of the target, with `x-cdi-content-type` naming which. Progress is
`kubevirt_cdi_clone_progress_total`, uncompressed bytes against -upload-bytes. Success writes
`Clone Complete` (and `, Preallocation applied`); any failure exits 255 as CDI's klog.Fatal.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from . import advice
from .children import child_environment, guarded
from .errors import ConfigError, ImporterError, SourceError, TargetError
from .formats.snappy_framed import frames
from .metrics import MetricsServer
from .podconfig import device_size
from .progress import Progress
from .termination import text_message, write_termination_message
from .uploadconfig import ClonerSettings, read_cloner_environment

__all__ = ["main"]

log = logging.getLogger("importer.cloner")
CHUNK = 1 << 20
FATAL = 255  # klog.Fatal


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cdi-cloner", description=__doc__.splitlines()[0])
    # without flags (as cloner_startup.sh, the image's clone-source command): VOLUME_MODE and
    # MOUNT_POINT say what, and the byte count is measured here
    p.add_argument("-content-type", dest="content_type",
                   choices=("blockdevice-clone", "filesystem-clone"))
    p.add_argument("-upload-bytes", dest="upload_bytes", type=int, default=0)
    p.add_argument("-mount", dest="mount")
    p.add_argument("-alsologtostderr", action="store_true")
    p.add_argument("--version", action="store_true")
    args, _unknown = p.parse_known_args([a for a in argv if not a.startswith("-v=")])
    return args


def upload_bytes(mount: Path, block: bool, preallocation: bool) -> int:
    """What cloner_startup.sh computes: the device's size, or `du` of the volume (apparent size
    when preallocating, allocated size otherwise)."""
    if block:
        return device_size(mount)
    total = 0
    for root, _dirs, files in os.walk(mount):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            total += st.st_size if preallocation else st.st_blocks * 512
    return total


def _device_blocks(path: Path, progress: Progress) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        while n := f.readinto(buf):
            progress.update(n)
            yield bytes(memoryview(buf)[:n])


def _tar_blocks(mount: Path, sparse: bool, progress: Progress) -> Iterator[bytes]:
    """GNU tar of the mount point's entries but lost+found, as the cloner script runs it."""
    entries = sorted(e for e in os.listdir(mount) if e != "lost+found")
    with tempfile.TemporaryFile() as empty_list, tempfile.TemporaryFile() as errors:
        argv = ["tar", "c", *(["-S"] if sparse else []), "-C", str(mount), "-f", "-"]
        if entries:
            argv += ["--", *entries]
        else:  # CDI: an empty volume clones as an empty archive
            argv += ["-T", f"/proc/self/fd/{empty_list.fileno()}"]
        # the minimal environment of every child; stderr to a file, so a talkative tar never
        # blocks on a full pipe while we read its output
        proc = subprocess.Popen(guarded(argv), stdout=subprocess.PIPE, stderr=errors,
                                pass_fds=(empty_list.fileno(),), env=child_environment())
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(CHUNK):
                progress.update(len(chunk))
                yield chunk
            if proc.wait() != 0:
                errors.seek(0)
                err = errors.read(4096).decode(errors="replace").strip()
                raise SourceError(f"tar of {mount} failed: {err}")
        finally:
            if proc.poll() is None:  # the reader stopped early (a failed upload, a signal)
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _context(s: ClonerSettings, work: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=s.server_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert, key = work / "tls.crt", work / "tls.key"
    cert.write_text(s.client_cert)
    key.write_text(s.client_key)
    key.chmod(0o600)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ConfigError(f"CLIENT_CERT/CLIENT_KEY are not a certificate and its key: "
                          f"{exc.reason}") from exc
    return ctx


def send(settings: ClonerSettings, body: Iterator[bytes], content_type: str) -> None:
    url = urlsplit(settings.upload_url)
    with tempfile.TemporaryDirectory(prefix="cloner-") as work:
        ctx = _context(settings, Path(work))
        conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, context=ctx,
                                           timeout=300)
        try:
            try:
                conn.request("POST", url.path or "/", body=frames(body), encode_chunked=True,
                             headers={"x-cdi-content-type": content_type,
                                      "Content-Type": "application/octet-stream"})
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError) as exc:
                # a server that refuses answers, then closes while we still send: its answer
                # is the error worth reporting
                log.info("the upload server closed the connection while we sent: %s", exc)
            resp = conn.getresponse()
            text = resp.read(4096).decode(errors="replace")
        except ssl.SSLError as exc:
            raise SourceError(f"TLS with {url.hostname} failed: {exc.reason or exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"sending the clone to {url.hostname} failed: {exc!r}") from exc
        finally:
            conn.close()
    if not 200 <= resp.status < 300:
        raise TargetError(f"Unexpected status code {resp.status}: {text}")


def main(argv: Sequence[str] | None = None) -> int:
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.version:
        from . import __version__ as version

        print(f"cdi-cloner (importer {version})")
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import __version__ as version

    log.info("importer %s as cdi-cloner", version)  # which image ran
    term = Path(os.environ.get("IMPORTER_FS_ROOT", "/")) / "dev" / "termination-log"
    try:
        settings = read_cloner_environment(os.environ)
        term = settings.termination_log
        block_mode = settings.volume_mode == "block"
        content_type = args.content_type or ("blockdevice-clone" if block_mode
                                             else "filesystem-clone")
        mount = Path(args.mount or settings.mount_point or (
            "/dev/cdi-block-volume" if block_mode else "/var/run/cdi/clone/source"))
        block = content_type == "blockdevice-clone"
        total = args.upload_bytes or upload_bytes(mount, block, settings.preallocation)
        progress = Progress()
        progress.total = total
        progress.plan([("Clone", 100, True)])
        progress.enter("Clone")
        metrics = _metrics(settings, progress)
        log.info("cloning %s (%s, %d bytes) to %s", mount, content_type, total,
                 urlsplit(settings.upload_url).hostname)
        body = (_device_blocks(mount, progress) if block
                else _tar_blocks(mount, not settings.preallocation, progress))
        send(settings, body, content_type)
        progress.finish()
        metrics.close()
    except ImporterError as exc:
        log.error("%s", exc)
        write_termination_message(term, text_message(f"Clone failed: {exc}"))
        return FATAL
    message = "Clone Complete" + (", Preallocation applied" if settings.preallocation else "")
    log.info(message)
    write_termination_message(term, message)
    return 0


def _metrics(settings: ClonerSettings, progress: Progress) -> MetricsServer:
    """`kubevirt_cdi_clone_progress_total` on the metrics port, as the importer's."""
    return MetricsServer(progress, settings.owner_uid, settings.metrics_port,
                         metric="kubevirt_cdi_clone_progress")


if __name__ == "__main__":
    raise SystemExit(main())
