"""The storage root: paths, JSON documents, listing and content versions."""

from __future__ import annotations

from slipway.storage import Storage


def test_json_roundtrip_listing_and_version(tmp_path):
    s = Storage(str(tmp_path / "root"))
    assert s.list_files("curated", "x") == []
    v0 = s.version("curated", "x")
    s.write_json({"a": 1}, "curated", "x", "one.json")
    assert s.read_json("curated", "x", "one.json") == {"a": 1}
    assert s.list_files("curated") == [s.uri("curated", "x", "one.json")]
    v1 = s.version("curated", "x")
    s.write_json({"a": 22}, "curated", "x", "one.json")
    assert len({v0, v1, s.version("curated", "x")}) == 3
    s.remove("curated", "x")
    assert not s.exists("curated", "x")


def test_file_uri_and_relative_roots_resolve_to_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Storage("data").root == str(tmp_path / "data")
    assert Storage(f"file://{tmp_path}/d").uri("a") == f"{tmp_path}/d/a"
