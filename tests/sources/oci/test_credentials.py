from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from importer.config import default_registry_auth_file
from importer.errors import ConfigError
from importer.sources.oci.credentials import credentials_from_file
from importer.sources.oci.reference import parse_reference


def _write(tmp_path: Path, auths: dict[str, object], **extra: object) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"auths": auths, **extra}))
    return p


def test_auth_field_and_docker_hub_key(tmp_path: Path) -> None:
    auth = base64.b64encode(b"me:pa:ss").decode()
    p = _write(tmp_path, {"https://index.docker.io/v1/": {"auth": auth}})
    creds = credentials_from_file(p, parse_reference("docker://fedora"))
    assert creds is not None and (creds.username, creds.password) == ("me", "pa:ss")
    assert "pa:ss" not in repr(creds)


def test_username_password_form_and_other_hosts(tmp_path: Path) -> None:
    p = _write(tmp_path, {"quay.io": {"username": "u", "password": "p"}})
    assert credentials_from_file(p, parse_reference("docker://quay.io/a/b")) is not None
    assert credentials_from_file(p, parse_reference("docker://ghcr.io/a/b")) is None


def test_broken_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        credentials_from_file(tmp_path / "bad.json", parse_reference("docker://quay.io/a"))
    p = _write(tmp_path, {"quay.io": {"auth": "!!!"}})
    with pytest.raises(ConfigError, match="not base64"):
        credentials_from_file(p, parse_reference("docker://quay.io/a"))


def test_default_file_order(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    home = tmp_path / ".docker" / "config.json"
    home.write_text("{}")
    assert default_registry_auth_file({"HOME": str(tmp_path)}) == home
    explicit = _write(tmp_path, {})
    assert default_registry_auth_file({"HOME": str(tmp_path),
                                       "REGISTRY_AUTH_FILE": str(explicit)}) == explicit
    assert default_registry_auth_file({}) is None
