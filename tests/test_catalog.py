from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emotionclip.core.catalog import DEFAULT_CATALOG, CatalogError, load_catalog
from emotionclip.core.ids import InvalidVideoId, sanitize_video_id, validate_video_id


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cat.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return yaml.safe_load(DEFAULT_CATALOG.read_text())


def test_default_catalog_has_paper_parameters():
    cat = load_catalog()
    s = cat.stages
    assert (s.frames.fps, s.frames.short_edge) == (8, 256)
    assert (s.humans.imgsz, s.humans.conf, s.humans.iou, s.humans.classes) == (640, 0.25, 0.45, [0])
    f = s.filter
    assert (f.min_duration_s, f.max_duration_s, f.min_text_chars, f.min_frames, f.max_neutral) == (2.0, 10.0, 3, 8, 0.05)
    assert s.search.min_duration_s == 40 * 60
    assert "7YpF6DntOYw" in s.search.exclude_ids and len(s.search.exclude_ids) == 11
    assert cat.profiles["paper"].emotion == "j-hartmann/emotion-english-distilroberta-base"
    assert cat.profiles["paper"].punctuation == "oliverguhr/fullstop-punctuation-multilang-large"


def test_unknown_key_is_named(tmp_path):
    data = _base()
    data["stages"]["filter"]["max_neutrl"] = 0.1
    with pytest.raises(CatalogError, match=r"stages\.filter\.max_neutrl: unknown key"):
        load_catalog(_write(tmp_path, data))


def test_bad_value_is_named(tmp_path):
    data = _base()
    data["stages"]["humans"]["conf"] = 1.5
    with pytest.raises(CatalogError, match=r"stages\.humans\.conf"):
        load_catalog(_write(tmp_path, data))


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="profile"):
        load_catalog(profile="nope")
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2")
    with pytest.raises(CatalogError, match="YAML"):
        load_catalog(bad)


def test_overrides_dotted_and_relative_paths(tmp_path):
    p = _write(tmp_path, _base())
    cat = load_catalog(p, overrides={"stages.filter.max_neutral": 0.3}, profile="tiny")
    assert cat.stages.filter.max_neutral == 0.3
    assert cat.root == str(tmp_path / "data")
    assert cat.artifact("words", "abc_-1") == f"{tmp_path}/data/videos/abc_-1/words.parquet"
    assert cat.model_ref("emotion") == str(tmp_path / "models" / "tiny" / "emotion")
    remote = load_catalog(p, data_root="s3://bucket/tv")
    assert remote.artifact("frames", "v1") == "s3://bucket/tv/videos/v1/frames.zip"


def test_fingerprint_changes_only_with_its_stage():
    a = load_catalog()
    b = load_catalog(overrides={"stages.filter.max_neutral": 0.3})
    assert a.stage_fingerprint("filter") != b.stage_fingerprint("filter")
    assert a.stage_fingerprint("sentences") == b.stage_fingerprint("sentences")
    c = load_catalog(profile="tiny")
    assert a.stage_fingerprint("sentiment") != c.stage_fingerprint("sentiment")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a b", "é", "..", "x" * 200])
def test_bad_ids_rejected_before_paths(bad):
    with pytest.raises(InvalidVideoId):
        validate_video_id(bad)
    with pytest.raises((InvalidVideoId, CatalogError)):
        load_catalog().artifact("words", bad)


def test_sanitize():
    assert sanitize_video_id("My Show: ep 1/2") == "My_Show_ep_1_2"
    assert validate_video_id(sanitize_video_id("../../etc/passwd"))
