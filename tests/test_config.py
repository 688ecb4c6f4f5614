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
