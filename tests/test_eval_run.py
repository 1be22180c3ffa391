"""The linear probe end to end with the tiny model (random OpenCLIP weights, the
tiny Ultralytics detector), on miniature benchmarks in their real layouts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from emotionclip.evaluation import sample as L
from emotionclip.evaluation.features import FeatureConfig, frame_range, uniform_indices
from emotionclip.evaluation.datasets import Sample
from emotionclip.evaluation.probes import ProbeConfig
from emotionclip.evaluation.run import load_model, run_linear_probe, split_features

# The CLI's call: the same arguments hit the same lru_cache entry (one model per process).
TINY = (None, None, "tiny", "cpu", False, None)


@pytest.fixture(scope="module")
def tiny():
    return load_model(*TINY)


def _count_forwards(model):
    calls = []
    handle = model.temporal.register_forward_hook(lambda *a: calls.append(1))  # once per video batch
    return calls, handle


def test_frame_selection():
    assert uniform_indices(0, 7, 8) == list(range(8))
    assert uniform_indices(3, 3, 4) == [3, 3, 3, 3]
    s = Sample("a", "dev", "x.mp4", "video", [0, 0], time_s=(0.5, 1.5))
    assert frame_range(s, 100, 8, None) == (4, 11)  # the 8 stored frames of that second
    s = Sample("a", "dev", "x.mp4", "video", 0, frames=(10, 19))
    assert frame_range(s, 100, 8, 10.0) == (8, 15)  # native 10 fps: 1.0 s .. 2.0 s
    assert frame_range(Sample("a", "dev", "x", "video", 0), 30, 8, None) == (0, 29)
    assert frame_range(Sample("a", "dev", "x", "video", 0, time_s=(5.0, 9.0)), 30, 8, None) == (29, 29)


def test_meld_cli_end_to_end_with_detection_and_cache(tmp_path, tiny):
    from emotionclip.cli.eval import app

    root = L.make_meld(tmp_path / "meld", per_class=1)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "meld", "--root", str(root)])
    assert res.exit_code == 0, res.output  # only the two clips the MELD.Raw release itself lacks are missing
    report = json.loads(res.stdout)
    assert report["splits"]["train"]["missing"] == ["MELD.Raw/train_splits/dia125_utt3.mp4"]
    # one clip per emotion, plus the release's missing dev clip (labelled joy here)
    assert report["splits"]["dev"]["class_counts"] == {"neutral": 1, "surprise": 1, "fear": 1, "sadness": 1,
                                                       "joy": 2, "disgust": 1, "anger": 1}

    calls, hook = _count_forwards(tiny.model)
    out = tmp_path / "out"
    args = ["run", "meld", "--root", str(root), "--profile", "tiny", "--out", str(out), "--det-imgsz", "64",
            "--batch-size", "4", "--c-mode", "preset"]
    try:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        first = len(calls)
        summary = json.loads(res.stdout)
        assert summary["features"]["train"]["computed"] == 7
        assert summary["features"]["train"]["skipped"][0]["id"] == "dia125_utt3"
        assert summary["features"]["dev"]["skipped"][0]["reason"] == "missing"
        assert summary["C"] == 8.0 and summary["c_source"] == "preset"
        assert first == 6  # 7 train clips in batches of 4, 7 dev, 7 test

        # second run with another probe setting: every feature from the cache, no forward pass
        res = runner.invoke(app, args + ["--c", "0.5"])
        assert res.exit_code == 0, res.output
        assert len(calls) == first
        summary = json.loads(res.stdout)
        assert all(v["computed"] == 0 and v["cached"] == 7 for v in summary["features"].values())
        assert summary["C"] == 0.5
    finally:
        hook.remove()
    df = pd.read_parquet(out / "results-meld.parquet")
    assert set(zip(df.split, df.metric)) == {("dev", "accuracy"), ("dev", "weighted_F1"),
                                             ("test", "accuracy"), ("test", "weighted_F1")}
    assert df["model"].iloc[0] == "profile:tiny:emotionclip-tiny-vit" and (df["seed"] == 2022).all()
    assert "| meld | test | accuracy |" in (out / "results-meld.md").read_text()
    # detections were cached per video, from the detector on the stored frames' timestamps
    assert list((out / "cache" / "work" / "detections").glob("*.parquet"))


def test_bold_with_joint_boxes_search_and_r2(tmp_path, tiny):
    root = L.make_bold(tmp_path / "bold", n_train=6, n_val=4)
    r = run_linear_probe("bold", root, tiny, tmp_path / "out", feature_config=FeatureConfig(detector=None),
                         probe_config=ProbeConfig(c_mode="grid", c_grid=(0.1, 10.0)))
    assert r["c_source"] == "search:holdout0.2-of-train" and r["C"] in (0.1, 10.0)
    metrics = {(x["split"], x["metric"]) for x in r["rows"]}
    assert metrics == {("val", "mAP"), ("val", "AUC"), ("val", "R2")}
    assert r["features"]["val"]["computed"] == 4
    # the joints box reaches the model: without it the features differ
    data = split_features(tiny, "bold", root, "val", tmp_path / "c2", FeatureConfig(detector=None))
    from emotionclip.evaluation.features import extract_features

    no_box = [Sample(s.id, s.split, s.media, s.kind, s.target, boxes=None) for s in data.samples]
    _, f2, _ = extract_features(tiny.model, no_box, dataset="bold", split="val", cache_dir=tmp_path / "c3",
                                model_fp=tiny.fingerprint)
    assert not np.allclose(data.features, f2)
    np.testing.assert_allclose(np.linalg.norm(data.features, axis=1), 1.0, rtol=1e-5)


def test_emotic_images_and_moviegraphs(tmp_path, tiny):
    root = L.make_emotic_preprocessed(tmp_path / "emotic", n=4, missing="val")
    r = run_linear_probe("emotic", root, tiny, tmp_path / "out")
    assert r["features"]["val"]["skipped"][0]["reason"] == "missing"
    assert {(x["split"], x["metric"]) for x in r["rows"]} == {("val", "mAP"), ("val", "AUC"),
                                                              ("test", "mAP"), ("test", "AUC")}
    root = L.make_moviegraphs(tmp_path / "mg")
    r = run_linear_probe("moviegraphs", root, tiny, tmp_path / "out", feature_config=FeatureConfig(detector=None),
                         probe_config=ProbeConfig(c_mode="preset"))
    assert {(x["split"], x["metric"]) for x in r["rows"]} == {("val", "accuracy"), ("test", "accuracy")}
    assert r["C"] == 10.0


def test_liris_regression_per_movie(tmp_path, tiny):
    root = L.make_liris(tmp_path / "liris", seconds=3)
    r = run_linear_probe("liris", root, tiny, tmp_path / "out", feature_config=FeatureConfig(detector=None),
                         probe_config=ProbeConfig(smoothing="per_movie", savgol_window=3, savgol_order=1))
    assert r["features"]["test"]["computed"] == 3 and len(r["features"]["test"]["skipped"]) == 3
    names = {x["metric"] for x in r["rows"]}
    assert names == {"valence_MSE", "arousal_MSE", "valence_r", "arousal_r"}
    notes = json.loads(r["rows"][0]["notes"])
    assert notes["smoothing"] == "per_movie" and notes["window"] == 3


def test_results_markdown_shows_the_paper_beside_ours():
    from emotionclip.evaluation import results

    rows = [{"dataset": d, "split": s, "metric": m, "value": v, "model": "tiny", "model_fingerprint": "x",
             "preset": "authors", "C": 1.0, "c_source": "preset", "seed": 0, "n_train": 1, "n_eval": 1,
             "n_skipped": 0, "notes": "{}", "created": "now"}
            for d, s, m, v in [("bold", "val", "mAP", 20.0), ("meld", "dev", "accuracy", 1.0)]]
    md = results.to_markdown(results.to_frame(rows))
    # paper Table 4(a): EmotionCLIP 22.51, VideoCLIP 11.19, X-CLIP 13.26; MELD dev is not in the paper
    assert "| bold | val | mAP | 20.00 | 22.51 | -2.51 | Table 4(a) | 11.19 | 13.26 |" in md
    assert "| meld | dev | accuracy | 1.00 | - | - | - | - | - |" in md
    assert "*" not in md.split("\n\n")[0]


def test_emotic_features_use_the_authors_224_resize(tmp_path, tiny):
    """EMOTIC images go through resize 224 + centre crop 224 (authors' loader), the
    video benchmarks through the model's 256 -> 224."""
    import dataclasses

    import torch
    from PIL import Image

    from emotionclip.evaluation.datasets import get_module
    from emotionclip.evaluation.features import dataset_preprocess, extract_features
    from emotionclip.models.transforms import ClipPreprocessor

    model = tiny.model
    assert dataset_preprocess(model.preprocess_cfg, "meld") is model.preprocess_cfg
    cfg224 = dataset_preprocess(model.preprocess_cfg, "emotic")
    assert cfg224 == dataclasses.replace(model.preprocess_cfg, resize=224)
    root = L.make_emotic_preprocessed(tmp_path / "emotic", n=2, missing=None)
    sample = get_module("emotic").load(root, "test")[0]
    _, feats, _ = extract_features(model, [sample], dataset="emotic", split="test", cache_dir=tmp_path / "cache",
                                   model_fp="tiny")
    w, h = Image.open(sample.media).size
    boxes = [np.asarray([sample.boxes[0]], np.float32) / np.asarray([w, h, w, h], np.float32)]
    with open(sample.media, "rb") as f:
        data = f.read()  # the file's bytes: extract_features decodes them as the training loader does
    with torch.no_grad():
        for cfg, same in ((cfg224, True), (model.preprocess_cfg, False)):
            x, m = ClipPreprocessor(cfg, train=False)([data], boxes, [None])
            ref = torch.nn.functional.normalize(model.eval().encode_frames(x, m), dim=-1).numpy()
            assert np.allclose(feats, ref, atol=1e-5) == same
