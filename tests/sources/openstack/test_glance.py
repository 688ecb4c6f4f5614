"""The Glance source (issue 21) through the command line, against the real Keystone and Glance
of servers.py: each way to log in, TLS with the secret's CA, the catalog's interfaces and
regions, ranged reads, the record's checksum, and every refusal named without a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ...conftest import Images, importer_cli, same_disk
from .fixtures import Glance

#: strings that must never reach a log, a message or a process list
SECRETS = ("keystone-admin-pw", "BEGIN CERTIFICATE")


def _secret_dir(path: Path, keys: dict[str, str]) -> Path:
    """The secret as Kubernetes mounts it: a file per key, a trailing newline on each."""
    path.mkdir()
    for key, value in keys.items():
        (path / key).write_text(value + "\n")
    return path


def _import(glance: Glance, tmp_path: Path, image_id: str, keys: dict[str, str],
            identity: str | None = None, *extra: str) -> tuple[int, dict[str, object], str]:
    secret = _secret_dir(tmp_path / "secret", keys)
    done = importer_cli("import", "--source", "glance", "--image-id", image_id,
                        "--openstack-secret", secret, "-o", "json", *extra,
                        identity or glance.cloud.keystone, tmp_path / "disk.img")
    secrets = [keys.get(k) for k in ("password", "token", "applicationCredentialSecret")]
    for s in (*SECRETS, *filter(None, secrets)):
        assert s not in done.stderr and s not in done.stdout
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else {}, done.stderr


def test_password_login_over_tls_with_version_discovery(glance: Glance, images: Images,
                                                        tmp_path: Path) -> None:
    """The Keystone root URL over https (nginx, the secret's CA): the v3 API is found from its
    version list, the image service's public endpoint is https too."""
    code, result, err = _import(glance, tmp_path, glance.qcow2_id, glance.cloud.secret(),
                                glance.cloud.keystone_tls)
    assert code == 0, err
    assert result["format"] == "qcow2" and result["plan"] == "extents"
    assert same_disk(tmp_path / "disk.img", images.raw)


def test_application_credential_on_the_internal_endpoint(glance: Glance, images: Images,
                                                         tmp_path: Path) -> None:
    cred_id, secret = glance.cloud.app_credential("importer-test-app")
    code, result, err = _import(glance, tmp_path, glance.raw_id, {
        "authType": "applicationcredential", "applicationCredentialID": cred_id,
        "applicationCredentialSecret": secret, "availability": "internal"})
    assert code == 0, err
    assert result["plan"] == "ranges"  # Glance serves byte ranges: several connections
    assert same_disk(tmp_path / "disk.img", images.raw)


def test_token_login_and_the_admin_endpoint_under_v2(glance: Glance, images: Images,
                                                     tmp_path: Path) -> None:
    code, _result, err = _import(glance, tmp_path, glance.qcow2_id, {
        "authType": "token", "token": glance.cloud.token(), "projectName": "admin",
        "availability": "admin"})
    assert code == 0, err
    assert same_disk(tmp_path / "disk.img", images.raw)


def test_the_record_checksum_is_verified_in_order_and_a_damaged_store_fails(
        glance: Glance, images: Images, tmp_path: Path) -> None:
    keys = glance.cloud.secret(regionName="", cacert="", availability="internal")
    image_id = glance.cloud.upload(images.raw, "raw")
    record = glance.cloud.record(image_id)
    (tmp_path / "a").mkdir()
    code, result, err = _import(glance, tmp_path / "a", image_id, keys, None,
                                "--connections", "1")
    assert code == 0, err
    assert result["checksum"] == f"sha512:{record['os_hash_value']}"
    # the same bytes but one, behind Glance's back: the record's multihash no longer matches
    stored = glance.cloud.store / image_id
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    (tmp_path / "b").mkdir()
    code, _result, err = _import(glance, tmp_path / "b", image_id, keys, None,
                                 "--connections", "1")
    assert code != 0 and "checksum mismatch" in err, err
    assert not (tmp_path / "b" / "disk.img").exists()


@pytest.mark.parametrize(("keys", "image", "words"), [
    ({"password": "wrong"}, "qcow2", "refused the password login of 'admin': HTTP 401"),
    ({"authType": "kerberos"}, "qcow2", "unsupported authentication type 'kerberos'"),
    ({"password": ""}, "qcow2", "password authentication needs username (or userID) and "
                                "password"),
    ({"availability": "private"}, "qcow2", "availability 'private'"),
    ({"insecureSkipVerify": "maybe"}, "qcow2", "Invalid boolean value for insecureSkipVerify"),
    ({"projectName": "", "projectDomainName": ""}, "qcow2", "unscoped token"),
    ({"regionName": "RegionThree"}, "qcow2", "no public image endpoint in region RegionThree"),
    ({"regionName": "RegionTwo"}, "qcow2", "connection refused"),
    ({}, "no-such-image", "not found, or the project cannot see it"),
    ({}, "", "--image-id is needed"),
])
def test_refusals_are_named(glance: Glance, tmp_path: Path, keys: dict[str, str], image: str,
                            words: str) -> None:
    image_id = glance.qcow2_id if image == "qcow2" else image
    code, _result, err = _import(glance, tmp_path, image_id, glance.cloud.secret(**keys),
                                 glance.cloud.keystone_tls)
    assert code != 0 and words in err, err
    assert not (tmp_path / "disk.img").exists()


def test_images_without_readable_data_are_named(glance: Glance, images: Images,
                                                tmp_path: Path) -> None:
    queued = glance.cloud.create_image("empty")
    code, _result, err = _import(glance, tmp_path, queued, glance.cloud.secret())
    assert code != 0 and f"Glance image {queued} has no data yet" in err, err
    deactivated = glance.cloud.upload(images["tiny.raw"])
    glance.cloud.deactivate(deactivated)
    (tmp_path / "b").mkdir()
    code, _result, err = _import(glance, tmp_path / "b", deactivated, glance.cloud.secret())
    assert code != 0 and "is deactivated" in err, err


def test_a_token_near_its_end_is_renewed_during_the_import(
        glance: Glance, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token counts as ending soon: each request to Glance logs in again first, and the
    ranged reads carry the new tokens (Keystone's fernet tokens differ at each login)."""
    from importer.config import build_config
    from importer.engine import run_import
    from importer.sources.openstack import keystone
    from importer.sources.openstack.secret import glance_options

    monkeypatch.setattr(keystone, "RENEW_BEFORE", 10.0 ** 9)
    logins: list[float] = []
    login = keystone.KeystoneSession._login

    def counted(self: keystone.KeystoneSession) -> None:
        logins.append(1.0)
        login(self)

    monkeypatch.setattr(keystone.KeystoneSession, "_login", counted)
    keys = glance.cloud.secret(cacert="", availability="internal")
    config = build_config(source=glance.cloud.keystone, dest=tmp_path / "disk.img",
                          source_kind="glance", options=glance_options(glance.raw_id, keys),
                          connections=2)
    result = run_import(config)
    assert result.path == "ranges" and same_disk(tmp_path / "disk.img", images.raw)
    assert len(logins) > 4  # the record, the probe and the ranged reads each took a new one
