"""The upload server survives every client (issue 19, items 7-13), against the real server in a
child process: each misbehaving client gets an HTTP answer, the server releases its locks, leaves
nothing behind in /data and takes a good upload next. Loads are bounded in count and time."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import ssl
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cramjam
import pytest

from tests.conftest import Images, same_disk

from .servers import UploadPod, wait_until

pytestmark = pytest.mark.timeout(180)
PREFIX = "/v1beta1/upload-resumable"
CLONE_NAME = "ns/src-ns/tgt"


def _tls(pod: UploadPod) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pod.certs.ca))
    ctx.load_cert_chain(*map(str, pod.certs.client))
    sock = socket.create_connection(("127.0.0.1", pod.port), timeout=30)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def _raw_request(pod: UploadPod, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as written (framing a client library would not produce); the status
    line's code and everything the server sent before it closed."""
    with _tls(pod) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return int(got.split(b" ", 2)[1]), got


def _call(pod: UploadPod, method: str, path: str, headers: dict[str, str],
          body: bytes | None = None) -> http.client.HTTPResponse:
    ctx = ssl.create_default_context(cafile=str(pod.certs.ca))
    ctx.load_cert_chain(*map(str, pod.certs.client))
    c = http.client.HTTPSConnection("127.0.0.1", pod.port, context=ctx, timeout=60)
    c.request(method, path, body=body, headers={"Tus-Resumable": "1.0.0", **headers})
    r = c.getresponse()
    r.body = r.read()  # type: ignore[attr-defined]
    c.close()
    return r


def _patch(pod: UploadPod, location: str, offset: int, data: bytes) -> http.client.HTTPResponse:
    return _call(pod, "PATCH", location, {"Upload-Offset": str(offset),
                                          "Content-Type": "application/offset+octet-stream"},
                 data)


def _create(pod: UploadPod, length: int, **headers: str) -> str:
    r = _call(pod, "POST", PREFIX, {"Upload-Length": str(length), **headers})
    assert r.status == 201, r.body  # type: ignore[attr-defined]
    return r.getheader("Location") or ""


def _nothing_left(pod: UploadPod) -> None:
    left = [p.name for p in pod.data.iterdir()] if pod.data.exists() else []
    assert left in ([], ["lost+found"]), left


def _good_upload_then_done(pod: UploadPod, images: Images) -> None:
    code, body = pod.curl("/v1beta1/upload", "-T", str(images["disk.raw"]))
    assert code == 200, body
    assert pod.wait()[0] == 0
    assert same_disk(pod.data / "disk.img", images["disk.raw"])


# ------------------------------------------------------------------ 7: tus with a checksum

def test_tus_upload_with_the_right_checksum_is_answered(pod: UploadPod, images: Images) -> None:
    data = images["disk.qcow2"].read_bytes()
    pod.start()
    location = _create(pod, len(data),
                       **{"x-cdi-checksum": f"sha256:{hashlib.sha256(data).hexdigest()}"})
    half = len(data) // 2
    assert _patch(pod, location, 0, data[:half]).status == 204
    r = _patch(pod, location, half, data[half:])
    assert r.status == 204, r.body  # type: ignore[attr-defined]
    assert pod.wait()[0] == 0
    assert same_disk(pod.data / "disk.img", images["disk.raw"])


def test_tus_upload_with_a_wrong_checksum_fails_and_frees_the_server(pod: UploadPod,
                                                                     images: Images) -> None:
    data = images["disk.qcow2"].read_bytes()
    pod.start()
    location = _create(pod, len(data), **{"x-cdi-checksum": "sha256:" + "0" * 64})
    r = _patch(pod, location, 0, data)
    assert r.status == 500 and b"checksum mismatch" in r.body  # type: ignore[attr-defined]
    _nothing_left(pod)
    _good_upload_then_done(pod, images)


# ------------------------------------------------------------------ 8: a very deep archive

def test_an_archive_3000_directories_deep_is_answered_and_cleaned_up(pod: UploadPod,
                                                                     images: Images,
                                                                     tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("d/" * 3000 + "f")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"deep"))
    deep = tmp_path / "deep.tar"
    deep.write_bytes(buf.getvalue())
    pod.start()
    code, body = pod.curl("/v1beta1/upload-archive", "-T", str(deep))
    assert code in (400, 500) and body.startswith("Saving stream failed: "), body
    _nothing_left(pod)
    # the /data lock was released: a good archive is extracted next
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a/b.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    good = tmp_path / "good.tar"
    good.write_bytes(buf.getvalue())
    code, body = pod.curl("/v1beta1/upload-archive", "-T", str(good))
    assert code == 200, body
    assert pod.wait()[0] == 0
    assert (pod.data / "a" / "b.txt").read_bytes() == b"ok"


# ------------------------------------------------------------------ 9: clone size limit

def test_a_block_clone_larger_than_the_volume_is_a_400(pod: UploadPod, images: Images,
                                                       tmp_path: Path) -> None:
    big = tmp_path / "big.sz"
    big.write_bytes(bytes(cramjam.snappy.compress(b"\x01" * (2 << 20))))
    pod.start(CLIENT_NAME=CLONE_NAME, UPLOAD_IMAGE_SIZE="1Mi")
    code, body = pod.curl("/v1beta1/upload", "-T", str(big), "-H",
                          "x-cdi-content-type: blockdevice-clone", cert=pod.certs.clone)
    assert code == 400, body
    assert body.startswith("Saving stream failed: effective image size is larger than the "
                           "reported available storage")
    _nothing_left(pod)
    small = tmp_path / "small.sz"
    small.write_bytes(bytes(cramjam.snappy.compress(b"\x02" * (1 << 20))))
    code, body = pod.curl("/v1beta1/upload", "-T", str(small), "-H",
                          "x-cdi-content-type: blockdevice-clone", cert=pod.certs.clone)
    assert code == 200, body
    assert pod.wait()[0] == 0
    assert (pod.data / "disk.img").read_bytes() == b"\x02" * (1 << 20)


# ------------------------------------------------------------------ 10, 11: framing

def test_conflicting_content_lengths_are_a_400(pod: UploadPod, images: Images) -> None:
    pod.start()
    for headers, body, want in (
            ("Content-Length: 4\nContent-Length: 100\n", b"abcd", 400),
            ("Content-Length: 4, 5\n", b"abcd", 400),
            ("Transfer-Encoding: gzip, chunked\n", b"0\r\n\r\n", 501),
            ("Transfer-Encoding: chunked\nContent-Length: 5\n", b"0\r\n\r\n", 400)):
        code, _ = _raw_request(pod, f"POST /v1beta1/upload HTTP/1.1\nHost: x\n{headers}", body)
        assert code == want, headers
    _nothing_left(pod)
    _good_upload_then_done(pod, images)


def test_a_patch_longer_than_the_upload_is_refused_not_smuggled(pod: UploadPod,
                                                                images: Images) -> None:
    pod.start()
    location = _create(pod, 1024)
    # 1024 bytes of upload, then what would be parsed as a second request on the connection
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    code, got = _raw_request(pod, f"PATCH {location} HTTP/1.1\nHost: x\nTus-Resumable: 1.0.0\n"
                                  "Upload-Offset: 0\n"
                                  "Content-Type: application/offset+octet-stream\n"
                                  f"Content-Length: {1024 + len(smuggled)}\n",
                             b"\0" * 1024 + smuggled)
    assert code == 413 and got.count(b"HTTP/1.1 ") == 1, got
    head = _call(pod, "HEAD", location, {})
    assert head.getheader("Upload-Offset") == "0"  # nothing of it was taken
    chunked = (b"800\r\n" + b"\0" * 2048 + b"\r\n0\r\n\r\n")
    code, got = _raw_request(pod, f"PATCH {location} HTTP/1.1\nHost: x\nTus-Resumable: 1.0.0\n"
                                  "Upload-Offset: 0\n"
                                  "Content-Type: application/offset+octet-stream\n"
                                  "Transfer-Encoding: chunked\n", chunked)
    assert code == 413, got


# ------------------------------------------------------------------ 12: deadline, termination

def test_an_abandoned_tus_upload_ends_at_the_deadline(pod: UploadPod, images: Images) -> None:
    data = images["disk.raw"].read_bytes()
    deadline = datetime.now(UTC) + timedelta(seconds=4)
    pod.start(DEADLINE=deadline.strftime("%Y-%m-%dT%H:%M:%SZ"))
    location = _create(pod, len(data))
    assert _patch(pod, location, 0, data[: len(data) // 3]).status == 204
    r = _call(pod, "OPTIONS", PREFIX, {})
    assert "expiration" in (r.getheader("Tus-Extension") or "")
    rc, err = pod.wait(60)  # and then nobody comes back
    assert rc == 0, err
    assert pod.message() == {"deadlinePassed": True, "message": "Deadline Passed"}
    _nothing_left(pod)


def test_a_tus_upload_can_be_terminated(pod: UploadPod, images: Images) -> None:
    data = images["disk.raw"].read_bytes()
    pod.start()
    location = _create(pod, len(data))
    assert _patch(pod, location, 0, data[:100000]).status == 204
    assert pod.curl("/v1beta1/upload", "-T", str(images["disk.raw"]))[0] == 503  # it holds
    assert _call(pod, "DELETE", location, {}).status == 204
    assert _call(pod, "HEAD", location, {}).status == 404
    _nothing_left(pod)
    _good_upload_then_done(pod, images)


# ------------------------------------------------------------------ 13: bounded resources

def _threads(pod: UploadPod) -> int:
    assert pod.proc is not None
    return len(os.listdir(f"/proc/{pod.proc.pid}/task"))


def test_half_open_connections_are_bounded(pod: UploadPod, images: Images) -> None:
    from importer.uploadserver.server import HANDSHAKE_SECONDS, MAX_CONNECTIONS

    pod.start()
    base = _threads(pod)
    idle = [socket.create_connection(("127.0.0.1", pod.port), timeout=5) for _ in range(300)]
    try:
        time.sleep(1)
        assert _threads(pod) <= base + MAX_CONNECTIONS + 2
        # no handshake: the server closes them once the handshake time is up
        idle[0].settimeout(HANDSHAKE_SECONDS + 10)
        started = time.monotonic()
        assert idle[0].recv(1) == b""
        assert time.monotonic() - started <= HANDSHAKE_SECONDS + 5
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: pod.curl("/healthz", method="GET")[0] == 200, timeout=30)
    _good_upload_then_done(pod, images)


def test_an_upload_length_beyond_the_volume_is_refused_at_creation(pod: UploadPod) -> None:
    pod.start(UPLOAD_IMAGE_SIZE="1Mi")
    r = _call(pod, "POST", PREFIX, {"Upload-Length": str(2 << 20)})
    assert r.status == 400 and b"larger than the reported available" in r.body  # type: ignore[attr-defined]
    assert _call(pod, "POST", PREFIX, {"Upload-Length": str(1 << 19)}).status == 201


def test_an_empty_block_clone_is_not_complete(pod: UploadPod, tmp_path: Path) -> None:
    empty = tmp_path / "empty.sz"
    empty.write_bytes(b"\xff\x06\x00\x00sNaPpY")  # the stream identifier, then nothing
    pod.start(CLIENT_NAME=CLONE_NAME)
    code, body = pod.curl("/v1beta1/upload", "-T", str(empty), "-H",
                          "x-cdi-content-type: blockdevice-clone", cert=pod.certs.clone)
    assert code == 500 and "no disk data" in body, body
    _nothing_left(pod)
    assert pod.proc is not None and pod.proc.poll() is None


def test_a_filesystem_clone_cut_at_a_member_boundary_is_an_error(pod: UploadPod,
                                                                 tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("one", "two"):
            info = tarfile.TarInfo(name)
            info.size = 1000
            tf.addfile(info, io.BytesIO(b"x" * 1000))
    whole = buf.getvalue()
    cut = whole[: 2 * (512 + 1024)]  # both members, no end-of-archive blocks
    body = tmp_path / "cut.sz"
    body.write_bytes(bytes(cramjam.snappy.compress(cut)))
    pod.start(CLIENT_NAME=CLONE_NAME)
    code, text = pod.curl("/v1beta1/upload", "-T", str(body), "-H",
                          "x-cdi-content-type: filesystem-clone", cert=pod.certs.clone)
    assert code == 500 and "truncated" in text, text
    _nothing_left(pod)
    body.write_bytes(bytes(cramjam.snappy.compress(whole)))
    code, text = pod.curl("/v1beta1/upload", "-T", str(body), "-H",
                          "x-cdi-content-type: filesystem-clone", cert=pod.certs.clone)
    assert code == 200, text
    assert pod.wait()[0] == 0
    assert (pod.data / "two").read_bytes() == b"x" * 1000


@pytest.mark.parametrize("part_head", [
    b"Content-Disposition: form-data; name=\"file\"\r\n" + b"X-Junk: " + b"a" * 200000 + b"\r\n",
    b"Content-Disposition form-data name file\r\n",  # no colon
    b"\x00\x01\x02\r\n",
])
def test_multipart_header_abuse_gets_an_answer(pod: UploadPod, images: Images,
                                               part_head: bytes) -> None:
    pod.start()
    body = b"--b\r\n" + part_head + b"\r\nDATA\r\n--b--\r\n"
    code, got = _raw_request(pod, "POST /v1beta1/upload-form HTTP/1.1\nHost: x\n"
                                  "Content-Type: multipart/form-data; boundary=b\n"
                                  f"Content-Length: {len(body)}\n", body)
    assert 400 <= code < 600, got
    _nothing_left(pod)
    _good_upload_then_done(pod, images)
