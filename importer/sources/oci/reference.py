"""Image references as CDI takes them (docs/pod-contract.md 4.4.2):

* ``docker://[host[:port]/]repo[:tag][@digest]``: Docker Hub short names (``fedora``,
  ``kubevirt/fedora``) resolve as docker and podman resolve them;
* ``oci-archive:PATH[:REF]``: a tar of an OCI image layout; REF picks the
  ``org.opencontainers.image.ref.name`` of index.json (split at the first colon, as
  containers/image does); ``oci:DIR[:REF]`` the same layout as a directory;
* ``docker-archive:PATH[:REF]``: a ``docker save`` tar; REF is a REPO:TAG it records, or ``@N``.

The grammar is distribution's reference grammar; it is parsed here rather than by
oras.container.Container because oras defaults short names to its own registry and knows no
transports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, SourceContentError
from .digest import Digest

__all__ = ["ARCHIVE_TRANSPORTS", "DOCKER_HUB", "ImageReference", "parse_reference"]

DOCKER_HUB = "docker.io"
#: transports that read a local file or directory (skopeo's names)
ARCHIVE_TRANSPORTS = ("oci-archive", "oci", "docker-archive")
#: where Docker Hub's API answers, and the key docker login writes into config.json
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*"
                   r"[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class ImageReference:
    transport: str  # "docker", or one of ARCHIVE_TRANSPORTS
    domain: str = ""  # as written (docker.io for short names)
    repository: str = ""
    tag: str | None = None
    digest: Digest | None = None
    archive: Path | None = None
    archive_ref: str | None = None

    @property
    def api_host(self) -> str:
        """host[:port] the registry API answers on."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest if given, else the tag."""
        return str(self.digest) if self.digest else (self.tag or "latest")

    @property
    def auth_keys(self) -> list[str]:
        """Keys a docker/podman credentials file may use for this registry, most specific
        first."""
        keys = [f"{self.domain}/{self.repository}", self.domain, f"https://{self.domain}",
                f"http://{self.domain}", f"https://{self.domain}/v1/", f"https://{self.domain}/v2/"]
        if self.domain == DOCKER_HUB:
            keys += [DOCKER_HUB_AUTH_KEY, "index.docker.io", DOCKER_HUB_API]
        return keys

    def __str__(self) -> str:
        if self.transport in ARCHIVE_TRANSPORTS:
            return f"{self.transport}:{self.archive}" + (f":{self.archive_ref}"
                                                         if self.archive_ref else "")
        text = f"docker://{self.domain}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    transport, sep, rest = text.partition(":")
    if not sep:
        raise ConfigError(f"invalid image name {text!r}: expected colon-separated "
                          "transport:reference, e.g. docker://quay.io/containerdisks/fedora:41")
    if transport in ARCHIVE_TRANSPORTS:
        path, _, ref = rest.partition(":")
        if not path:
            raise ConfigError(f"invalid image name {text!r}: {transport} needs a path")
        return ImageReference(transport, archive=Path(path), archive_ref=ref or None)
    if transport != "docker":
        raise ConfigError(f"invalid image name {text!r}, unknown transport {transport!r}: use "
                          "docker://host/repo:tag, oci-archive:PATH, oci:DIR or "
                          "docker-archive:PATH")
    if not rest.startswith("//"):
        raise ConfigError(f"invalid image name {text!r}: the docker transport is written "
                          "docker://host/repo:tag")
    return _parse_docker(rest[2:], text)


def _parse_docker(name: str, text: str) -> ImageReference:
    name, at, digest_text = name.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text, f"image {text!r}")
        except SourceContentError:
            # the user typed it: a usage error, not a hostile manifest (found by fuzzing)
            raise ConfigError(f"invalid image name {text!r}: {digest_text!r} is not a digest; "
                              "use @sha256:<64 hex digits>") from None
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, path = first, remainder
        if not _HOST.match(domain):
            raise ConfigError(f"invalid image name {text!r}: {domain!r} is not a host[:port]")
    else:
        domain, path = DOCKER_HUB, name
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.match(tag):
            raise ConfigError(f"invalid image name {text!r}: {tag!r} is not a valid tag")
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not _REPO.match(path):
        raise ConfigError(f"invalid image name {text!r}: {path!r} is not a valid repository "
                          "(lower-case letters, digits and . _ - separated by /)")
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference("docker", domain=domain, repository=path, tag=tag, digest=digest)
