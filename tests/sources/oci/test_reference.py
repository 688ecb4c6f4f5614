from __future__ import annotations

import pytest

from importer.errors import ConfigError
from importer.sources.oci.reference import parse_reference

HEX = "a" * 64


@pytest.mark.parametrize("text, domain, api, repo, tag, digest", [
    ("docker://fedora", "docker.io", "registry-1.docker.io", "library/fedora", "latest", None),
    ("docker://kubevirt/fedora-cloud:41", "docker.io", "registry-1.docker.io",
     "kubevirt/fedora-cloud", "41", None),
    ("docker://index.docker.io/library/alpine", "docker.io", "registry-1.docker.io",
     "library/alpine", "latest", None),
    ("docker://quay.io/containerdisks/fedora:41", "quay.io", "quay.io", "containerdisks/fedora",
     "41", None),
    ("docker://127.0.0.1:5000/cd/q:v1", "127.0.0.1:5000", "127.0.0.1:5000", "cd/q", "v1", None),
    ("docker://localhost/disk", "localhost", "localhost", "disk", "latest", None),
    (f"docker://reg.example:443/a/b@sha256:{HEX}", "reg.example:443", "reg.example:443", "a/b",
     None, f"sha256:{HEX}"),
    (f"docker://reg.example/a:t@sha256:{HEX}", "reg.example", "reg.example", "a", "t",
     f"sha256:{HEX}"),
])
def test_docker_references(text: str, domain: str, api: str, repo: str, tag: str | None,
                           digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.api_host, ref.repository, ref.tag) == (domain, api, repo, tag)
    assert (str(ref.digest) if ref.digest else None) == digest
    assert ref.reference == (digest or tag)


def test_docker_hub_credential_keys() -> None:
    assert "https://index.docker.io/v1/" in parse_reference("docker://fedora").auth_keys


@pytest.mark.parametrize("text, message", [
    ("fedora", "expected colon-separated transport:reference"),
    ("dir:/x", "unknown transport 'dir'"),
    ("oci:", "oci needs a path"),
    ("docker:fedora", "docker://host/repo:tag"),
    ("docker://Quay.io/UPPER", "not a valid repository"),
    ("docker://host.io/repo:bad tag", "not a valid tag"),
    ("oci-archive:", "needs a path"),
])
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_reference(text)


def test_invalid_digest_is_refused_before_any_use() -> None:
    # CVE-2024-3727: digests reach URLs and paths, so their form is checked first
    # the user typed it: a usage error (exit 2), not a hostile manifest
    with pytest.raises(ConfigError, match="is not a digest"):
        parse_reference("docker://host.io/repo@sha256:../../etc/passwd")


def test_oci_archive_splits_at_the_first_colon() -> None:
    ref = parse_reference("oci-archive:/srv/images.tar:fedora:41")
    assert str(ref.archive) == "/srv/images.tar" and ref.archive_ref == "fedora:41"
    assert parse_reference("oci-archive:/srv/x.tar").archive_ref is None
