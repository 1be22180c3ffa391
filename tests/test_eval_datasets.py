"""Benchmark loaders on miniature folders in each real layout, and `inspect`."""

from __future__ import annotations

import numpy as np
import pytest

from emotionclip.evaluation import sample as L
from emotionclip.evaluation.datasets import EMOTIC_CATEGORIES, DatasetLayoutError, bold, emotic, liris, meld, moviegraphs


def test_meld_loader_and_inspect_report_known_missing(tmp_path):
    L.make_meld(tmp_path, per_class=2)
    train = meld.load(tmp_path, "train")
    assert len(train) == 7 * 2 + 1
    s = next(x for x in train if x.id == "dia3_utt1")
    assert s.target == meld.EMOTIONS.index("sadness")
    assert s.media.endswith("MELD.Raw/train_splits/dia3_utt1.mp4")
    assert s.aux["episode_time_s"] == pytest.approx((644.769, 646.101))
    assert "\u2019" in s.aux["utterance"]  # the cp1252 byte decoded

    rep = meld.inspect(tmp_path)
    assert rep["splits"]["train"]["samples"] == 15
    assert rep["splits"]["train"]["missing"] == ["MELD.Raw/train_splits/dia125_utt3.mp4"]
    assert rep["splits"]["dev"]["missing"] == ["MELD.Raw/dev_splits_complete/dia110_utt7.mp4"]
    assert rep["splits"]["test"]["missing"] == []
    assert rep["splits"]["train"]["class_counts"]["joy"] == 3
    assert rep["splits"]["train"]["usable_samples"] == 14
    assert rep["ok"] is True  # only the release's own known gaps are missing


def test_meld_time_parsing_and_bad_emotion(tmp_path):
    assert meld.parse_time("0:10:44,769") == pytest.approx(644.769)
    assert meld.parse_time("1:00:00.5") == pytest.approx(3600.5)
    with pytest.raises(ValueError):
        meld.parse_time("10:44")
    base = tmp_path / "MELD.Raw"
    base.mkdir()
    (base / "test_sent_emo.csv").write_text(",".join(meld.COLUMNS) + "\n1,hi,A,bored,neutral,0,0,1,1,0:00:01,000,0:00:02,000\n")
    with pytest.raises(DatasetLayoutError, match="unknown emotion"):
        meld.load(tmp_path, "test")


def test_bold_loader_binarises_and_boxes_from_joints(tmp_path):
    L.make_bold(tmp_path, n_train=3, n_val=2)
    train = bold.load(tmp_path, "train")
    assert len(train) == 3
    raw = bold.read_annotations(tmp_path / "annotations" / "train.csv")
    s = train[0]
    expect = (raw.iloc[0][bold.BOLD_CATEGORIES].to_numpy(float) >= 0.5).astype(np.float32)
    np.testing.assert_array_equal(s.target, expect)
    assert s.aux["vad"].shape == (3,)
    # joints frames 500..509 -> relative 0..9; person 0's box = extent of its non-zero joints
    assert sorted(s.boxes) == list(range(10))
    j = np.load(tmp_path / "joints" / "003" / "cliptrain0.mp4" / "0000.npy")
    row = j[(j[:, 0] == 500) & (j[:, 1] == 0)][0][2:].reshape(18, 3)
    row = row[~np.all(row == 0, axis=1)]
    assert s.boxes[0] == pytest.approx((row[:, 0].min(), row[:, 1].min(), row[:, 0].max(), row[:, 1].max()))
    assert s.media.endswith("videos/003/cliptrain0.mp4/0000.mp4")
    with pytest.raises(DatasetLayoutError, match="public labels"):
        bold.load(tmp_path, "test")


def test_bold_inspect_reports_missing_joints_and_video(tmp_path):
    L.make_bold(tmp_path, n_train=3, n_val=2)
    (tmp_path / "joints" / "003" / "cliptrain1.mp4" / "0001.npy").unlink()
    (tmp_path / "videos" / "003" / "clipval0.mp4" / "0000.mp4").write_bytes(b"<html>not a video</html>")
    rep = bold.inspect(tmp_path)
    assert rep["splits"]["train"]["missing"] == ["joints/003/cliptrain1.mp4/0001.npy"]
    assert rep["splits"]["val"]["unreadable"] == ["videos/003/clipval0.mp4/0000.mp4"]
    assert rep["splits"]["train"]["samples_affected"] == ["003/cliptrain1.mp4/0001.mp4#0"]
    assert sum(rep["splits"]["train"]["class_counts"].values()) >= 3


def test_bold_wrong_column_count(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "val.csv").write_text("a.mp4,0,1,2,0.5\n")
    rep = bold.inspect(tmp_path)
    assert any("expected 37 columns" in e for e in rep["errors"])


def test_emotic_preprocessed_layout(tmp_path):
    L.make_emotic_preprocessed(tmp_path, n=4, missing="val")
    test = emotic.load(tmp_path, "test")
    assert len(test) == 4 and test[0].kind == "image"
    assert test[1].boxes == {0: (5.0, 4.0, 40.0, 35.0)}
    assert test[1].target[[1, 4]].tolist() == [1.0, 1.0]
    rep = emotic.inspect(tmp_path)
    assert rep["splits"]["val"]["missing"] == ["emotic/mscoco/images/val_3.jpg"]
    assert rep["splits"]["train"]["class_counts"][EMOTIC_CATEGORIES[0]] == 1


def test_emotic_official_mat_layout(tmp_path):
    L.make_emotic_mat(tmp_path)
    train = emotic.load(tmp_path, "train")
    assert [s.id for s in train] == ["framesdb/images/a.jpg#0", "framesdb/images/a.jpg#1", "framesdb/images/b.jpg#0"]
    got = {EMOTIC_CATEGORIES[i] for i in np.flatnonzero(train[0].target)}
    assert got == {"Peace", "Happiness"}
    assert EMOTIC_CATEGORIES[int(np.flatnonzero(train[2].target)[0])] == "Doubt/Confusion"
    assert train[1].boxes[0] == (20.0, 1.0, 55.0, 39.0)
    val = emotic.load(tmp_path, "val")
    assert {EMOTIC_CATEGORIES[i] for i in np.flatnonzero(val[0].target)} == {"Fear", "Pain"}
    np.testing.assert_allclose(val[0].aux["vad"], [4, 5, 6])
    rep = emotic.inspect(tmp_path)
    assert rep["splits"]["train"]["samples"] == 3
    assert rep["splits"]["train"]["missing"] == ["emotic/framesdb/images/a.jpg", "emotic/framesdb/images/b.jpg"]


def test_moviegraphs_layout_and_unmapped_labels(tmp_path):
    L.make_moviegraphs(tmp_path)
    train = moviegraphs.load(tmp_path, "train")
    assert [s.id for s in train] == ["tt0000001#0", "tt0000001#1"]
    assert train[0].frames == (0, 9)  # scene 0 = shot 1
    assert train[1].frames == (10, 10 + moviegraphs.OPEN_END_FRAMES)  # shots 2..3, the last open-ended (authors: clip start + 8 x 24)
    cats = lambda s: {EMOTIC_CATEGORIES[i] for i in np.flatnonzero(s.target)}  # noqa: E731
    assert cats(train[0]) == {"Happiness", "Doubt/Confusion"}
    assert cats(train[1]) == {"Happiness"}  # via label_map.json
    rep = moviegraphs.inspect(tmp_path)
    assert rep["splits"]["val"]["unmapped_labels"] == {"zzz-unknown": 1}
    assert rep["ok"] is True


def test_liris_layout(tmp_path):
    L.make_liris(tmp_path, seconds=4)
    dev = liris.load(tmp_path, "dev")
    assert len(dev) == 8 and [s.group for s in dev[:5]] == ["MEDIAEVAL18_00"] * 4 + ["MEDIAEVAL18_01"]
    assert dev[1].id == "MEDIAEVAL18_00@1" and dev[1].time_s == (0.5, 1.5)
    assert dev[0].time_s == (0.0, 0.5)
    rep = liris.inspect(tmp_path)
    assert rep["splits"]["test"]["missing"] == ["movies/MEDIAEVAL18_55.mp4"]
    assert rep["splits"]["dev"]["movies"] == 2
    assert set(rep["splits"]["dev"]["class_counts"]) == {"valence_mean", "arousal_mean", "valence_std", "arousal_std"}


def test_missing_annotation_files_are_reported_not_raised(tmp_path):
    rep = meld.inspect(tmp_path)
    assert len(rep["errors"]) == 3 and rep["ok"] is False
