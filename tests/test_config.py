from __future__ import annotations

from pathlib import Path

import pytest

from importer.config import ContentType, build_config, read_header_files
from importer.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    cfg = build_config(source="http://h/x", dest=str(tmp_path / "d.img"))
    assert cfg.content_type is ContentType.KUBEVIRT and cfg.image_size is None
    assert cfg.http.insecure is False and cfg.http.headers == ()


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(source="gopher://x", dest=str(tmp_path), content_type="iso",
                     image_size="lots", connections=0, ca_dir=str(tmp_path / "nope"),
                     headers=["no colon"])
    msg = str(ei.value)
    for needle in ("unsupported scheme", "--content-type", "--image-size", "--connections",
                   "--ca-dir", "invalid header", "is a directory"):
        assert needle in msg


def test_header_directory_like_a_secret_volume(tmp_path: Path) -> None:
    d = tmp_path / "extraheaders" / "0"
    d.mkdir(parents=True)
    (d / "token").write_text("Authorization: Bearer abc\n")  # trailing newline (CDI quirk Q9)
    (d / "..data").mkdir()
    (d / "..data" / "token").write_text("Ignored: yes")
    (d / ".hidden").write_text("Ignored: yes")
    headers = read_header_files(tmp_path / "extraheaders")
    assert [(h.name, h.value, h.secret) for h in headers] == [("Authorization", "Bearer abc", True)]
    assert "abc" not in repr(headers[0])


def test_proxies_from_environment(tmp_path: Path) -> None:
    cfg = build_config(source="http://h/x", dest=str(tmp_path / "d"),
                       environ={"https_proxy": "http://proxy:3128", "NO_PROXY": "internal",
                                "IMPORTER_PASSWORD": "pw"}, username="u")
    assert cfg.http.proxy_for("https://images.example/x") == "http://proxy:3128"
    assert cfg.http.proxy_for("https://db.internal/x") is None
    assert cfg.http.password == "pw"
    assert "pw" not in repr(cfg.http)


def test_archive_destination_must_be_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="extracts into a directory"):
        build_config(source="http://h/x", dest=str(f), content_type="archive")


# The CLI and the pod validate their shared settings with one function; only the names differ.
SHARED_CASES = [
    # (CLI keyword arguments, pod variables, what both messages must say after the name)
    ({"converter": "magic"}, {"IMPORTER_CONVERTER": "magic"}, "'magic': use auto or qemu-img"),
    ({"content_type": "iso"}, {"IMPORTER_CONTENTTYPE": "iso"}, "'iso': use 'kubevirt'"),
    ({"image_size": "lots"}, {"IMPORTER_IMAGE_SIZE": "lots"}, ": use a number"),
    ({"checksum": "md5:1"}, {"IMPORTER_CHECKSUM": "md5:1"}, "md5"),
    ({"source": "gopher://h/x"}, {"IMPORTER_ENDPOINT": "gopher://h/x"}, "unsupported scheme 'gopher'"),
    ({"source": "docker://UPPER/x"}, {"IMPORTER_SOURCE": "registry",
                                      "IMPORTER_ENDPOINT": "docker://UPPER/x"}, "UPPER"),
    ({"source": "docker://quay.io/x", "content_type": "archive"},
     {"IMPORTER_SOURCE": "registry", "IMPORTER_ENDPOINT": "docker://quay.io/x",
      "IMPORTER_CONTENTTYPE": "archive"}, "'archive' is not possible with a container image"),
]


@pytest.mark.parametrize(("cli", "pod", "said"), SHARED_CASES)
def test_cli_and_pod_share_one_validator(tmp_path: Path, cli: dict[str, str],
                                         pod: dict[str, str], said: str) -> None:
    from importer.podconfig import read_pod_environment

    with pytest.raises(ConfigError) as cli_error:
        build_config(**{"source": "http://h/x", "dest": str(tmp_path / "d.img"), **cli})
    (tmp_path / "data").mkdir()
    env = {"IMPORTER_FS_ROOT": str(tmp_path), "IMPORTER_SOURCE": "http",
           "IMPORTER_ENDPOINT": "http://h/x", **pod}
    with pytest.raises(ConfigError) as pod_error:
        read_pod_environment(env)
    assert said in str(cli_error.value) and said in str(pod_error.value)
    # each names the setting as its user wrote it
    assert "IMPORTER_" not in str(cli_error.value).replace("IMPORTER_PASSWORD", "")
    assert "--" not in str(pod_error.value)


def test_the_pod_uses_url_credentials_and_the_cli_refuses_them(tmp_path: Path) -> None:
    from importer.podconfig import read_pod_environment

    with pytest.raises(ConfigError, match="credentials in the URL are not accepted"):
        build_config(source="http://u:p%40ss@h/x", dest=str(tmp_path / "d.img"))
    (tmp_path / "data").mkdir()
    _, config = read_pod_environment({"IMPORTER_FS_ROOT": str(tmp_path), "IMPORTER_SOURCE": "http",
                                      "IMPORTER_ENDPOINT": "http://u:p%40ss@h/x"})
    assert config is not None and config.source == "http://h/x"
    assert (config.http.username, config.http.password) == ("u", "p@ss")
