"""Resumable uploads (tus 1.0 core + creation): the tuspy client, and connections cut at random
points then continued from the offset the server reports, against the real upload server."""

from __future__ import annotations

import http.client
import random
import ssl

import pytest

from tests.conftest import Images, same_disk

from .servers import UploadPod

pytestmark = pytest.mark.timeout(180)
PREFIX = "/v1beta1/upload-resumable"




def _conn(pod: UploadPod) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(pod.certs.ca))
    ctx.load_cert_chain(*map(str, pod.certs.client))
    return http.client.HTTPSConnection("127.0.0.1", pod.port, context=ctx, timeout=60)


def _call(pod: UploadPod, method: str, path: str, headers: dict[str, str],
          body: bytes | None = None) -> http.client.HTTPResponse:
    c = _conn(pod)
    c.request(method, path, body=body, headers={"Tus-Resumable": "1.0.0", **headers})
    r = c.getresponse()
    r.read()
    c.close()
    return r


def test_tuspy_uploads_in_chunks(pod: UploadPod, images: Images,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tusclient import client

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pod.certs.ca))  # requests, under tuspy
    pod.start()
    tus = client.TusClient(pod.url(PREFIX), client_cert=tuple(map(str, pod.certs.client)))
    uploader = tus.uploader(file_path=str(images["disk.qcow2"]), chunk_size=1 << 20)
    uploader.upload()
    rc, err = pod.wait()
    assert rc == 0, err
    assert pod.message() == {"preallocationApplied": False, "message": "Upload Complete"}
    assert same_disk(pod.data / "disk.img", images["disk.raw"])


def test_cut_connections_continue_at_the_offset(pod: UploadPod, images: Images) -> None:
    data = images["disk.raw.gz"].read_bytes()  # decoded as it streams, across the cuts
    pod.start()
    r = _call(pod, "POST", PREFIX, {"Upload-Length": str(len(data))})
    assert r.status == 201
    location = r.getheader("Location") or ""
    rnd = random.Random(11)
    offset, cuts = 0, 0
    while offset < len(data):
        c = _conn(pod)
        c.putrequest("PATCH", location)
        for k, v in {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                     "Content-Type": "application/offset+octet-stream",
                     "Content-Length": str(len(data) - offset)}.items():
            c.putheader(k, v)
        c.endheaders()
        if cuts < 3:  # send part of the rest, then the connection drops
            c.send(data[offset: offset + rnd.randrange(1, max(2, (len(data) - offset) // 2))])
            c.sock.close()  # type: ignore[union-attr]
            cuts += 1
        else:
            c.send(data[offset:])
            resp = c.getresponse()
            assert resp.status == 204, resp.read()
            assert resp.getheader("Upload-Offset") == str(len(data))
            c.close()
            break  # complete: the server finishes and exits (no HEAD to ask any more)
        head = _call(pod, "HEAD", location, {})
        assert head.status == 200
        new = int(head.getheader("Upload-Offset") or -1)
        assert offset <= new <= len(data)
        offset = new
    assert pod.wait()[0] == 0
    assert same_disk(pod.data / "disk.img", images["disk.raw"])


def test_the_wrong_offset_is_a_409_and_other_uploads_wait(pod: UploadPod,
                                                          images: Images) -> None:
    pod.start()
    r = _call(pod, "POST", PREFIX, {"Upload-Length": "1048576"})
    location = r.getheader("Location") or ""
    patch = {"Upload-Offset": "4096", "Content-Type": "application/offset+octet-stream"}
    assert _call(pod, "PATCH", location, patch, b"x" * 10).status == 409
    assert pod.curl("/v1beta1/upload", "-T", str(images["disk.raw"]))[0] == 503
    assert _call(pod, "HEAD", PREFIX + "/nope", {}).status == 404
    assert pod.curl(location, method="HEAD", cert=pod.certs.wrong)[0] == 401
