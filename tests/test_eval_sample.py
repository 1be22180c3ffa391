"""Miniature benchmarks (`emotionclip.evaluation.sample`, `emotionclip eval make-sample`):
the published layouts, every class present in every split, the probe end to end on
each through the CLI with the tiny model, and the linear-probe flow generating them
on the fly and evaluating the newest checkpoint of a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from emotionclip.evaluation.datasets import get_module, get_spec
from emotionclip.evaluation.sample import DATASETS, MARKER, SIZES, is_sample, make_sample

# The metrics each benchmark's results table reports (paper Table 4 and its extras).
METRICS = {
    "bold": {("val", "mAP"), ("val", "AUC"), ("val", "R2")},
    "moviegraphs": {("val", "accuracy"), ("test", "accuracy")},
    "meld": {(s, m) for s in ("dev", "test") for m in ("accuracy", "weighted_F1")},
    "emotic": {(s, m) for s in ("val", "test") for m in ("mAP", "AUC")},
    "liris": {("test", f"{d}_{m}") for d in ("valence", "arousal") for m in ("MSE", "r")},
}


def _app():
    from emotionclip.cli.eval import app

    return app


@pytest.mark.parametrize("dataset", DATASETS)
def test_make_sample_then_eval_run_through_the_cli(dataset, tmp_path):
    runner = CliRunner()
    root = tmp_path / dataset
    res = runner.invoke(_app(), ["make-sample", dataset, "--out", str(root), "--seed", "3", "--size", "small"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.stdout)
    assert made["root"] == str(root) and is_sample(root)
    assert made["next"].startswith(f"emotionclip eval run {dataset} --root {root} --profile tiny")
    spec = get_spec(dataset)
    assert set(made["splits"]) == set(spec.splits) and min(made["splits"].values()) >= SIZES["small"]

    res = runner.invoke(_app(), ["inspect", dataset, "--root", str(root)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and not report.get("notes")  # complete: none of the release's missing files
    assert {s: v["usable_samples"] for s, v in report["splits"].items()} == made["splits"]

    out = tmp_path / "out"
    res = runner.invoke(_app(), ["run", dataset, "--root", str(root), "--profile", "tiny", "--out", str(out),
                                 "--det-imgsz", "64", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {s: f["computed"] for s, f in summary["features"].items()} == made["splits"]
    assert all(not f["skipped"] for f in summary["features"].values())
    df = pd.read_parquet(out / f"results-{spec.name}.parquet")
    assert set(zip(df.split, df.metric)) == METRICS[spec.name]
    assert df["value"].notna().all(), df[["split", "metric", "value"]]  # every metric defined on the sample


@pytest.mark.parametrize("n", [4, 5, 14])
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_class_at_least_twice_in_every_split(dataset, n, tmp_path):
    root = make_sample(dataset, tmp_path / dataset, n_per_split=n)
    spec = get_spec(dataset)
    for split in spec.splits:
        samples = spec.load(root, split)
        assert len(samples) >= n, (split, len(samples))
        if spec.task == "multiclass":
            counts = np.bincount([int(s.target) for s in samples], minlength=len(spec.classes))
            assert counts.min() >= 2, (split, counts)
        elif spec.task == "multilabel":
            y = np.stack([s.target for s in samples])
            assert y.shape[1] == len(spec.classes)
            assert y.sum(0).min() >= 2 and (len(y) - y.sum(0)).min() >= 2, (split, y.sum(0))
        else:
            y = np.stack([s.target for s in samples])
            assert (y.std(0) > 0).all(), (split, y)
    assert get_module(dataset).inspect(root)["ok"]


def test_layouts_are_the_published_ones(tmp_path):
    """What a newcomer compares with the real download: the release's own file names."""
    bold = make_sample("bold", tmp_path / "bold", n_per_split=4)
    ann = pd.read_csv(bold / "annotations" / "train.csv", header=None)
    # videos/003/<YouTube id>.mp4/<clip>.mp4, joints/003/<YouTube id>.mp4/<clip>.npy
    parts = ann[0].iloc[0].split("/")
    assert len(parts) == 3 and parts[0] == "003" and len(parts[1]) == len("IzvOYVMltkI.mp4") and parts[2] == "0000.mp4"
    assert (bold / "joints" / f"{ann[0].iloc[0][:-len('.mp4')]}.npy").is_file()
    meld = make_sample("meld", tmp_path / "meld", n_per_split=4)
    assert sorted(p.name for p in (meld / "MELD.Raw").iterdir()) == [
        "dev_sent_emo.csv", "dev_splits_complete", "output_repeated_splits_test", "test_sent_emo.csv",
        "train_sent_emo.csv", "train_splits"]
    mg = make_sample("mg", tmp_path / "mg", n_per_split=4)
    assert (mg / "mg" / "split.json").is_file() and (mg / "mg_videoinfo" / "scene_boundaries").is_dir()
    labels = json.loads((mg / "mg" / "py3loader" / "emotion_labels.json").read_text())
    assert "Doubt/Conf" in {lab for clips in labels.values() for labs in clips.values() for lab in labs}
    liris = make_sample("liris-accede", tmp_path / "liris", n_per_split=4)
    assert (liris / "annotations" / "MEDIAEVAL18-TestSet-Valence_Arousal-annotations" / "annotations"
            / "MEDIAEVAL18_54_Valence-Arousal.txt").is_file()
    emotic = make_sample("emotic", tmp_path / "emotic", n_per_split=4)
    assert np.load(emotic / "annotations_pre" / "val_cat_arr.npy").shape == (4, 26)
    info = json.loads((emotic / MARKER).read_text())
    assert info["synthetic"] is True and info["dataset"] == "emotic" and info["splits"]["test"] == 4


def test_deterministic_per_seed_and_refuses_an_occupied_folder(tmp_path):
    a = make_sample("bold", tmp_path / "a", seed=5, n_per_split=4)
    b = make_sample("bold", tmp_path / "b", seed=5, n_per_split=4)
    c = make_sample("bold", tmp_path / "c", seed=6, n_per_split=4)
    read = lambda r: (r / "annotations" / "val.csv").read_bytes()  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)

    (tmp_path / "empty").mkdir()
    assert is_sample(make_sample("emotic", tmp_path / "empty", n_per_split=4))  # an empty folder is fine
    with pytest.raises(FileExistsError, match="not an empty folder"):
        make_sample("emotic", a, n_per_split=4)
    assert not is_sample(a / "x") and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "empty"]

    runner = CliRunner()
    for args, message in ((["make-sample", "bold", "--out", str(a)], "not an empty folder"),
                          (["make-sample", "imagenet", "--out", str(tmp_path / "x")], "unknown dataset"),
                          (["make-sample", "meld", "--out", str(tmp_path / "x"), "--n-per-split", "2"],
                           "at least 4"),
                          (["make-sample", "meld", "--out", str(tmp_path / "x"), "--size", "huge"], "small, medium")):
        res = runner.invoke(_app(), args)
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_flow_generates_samples_once_and_probes_the_newest_checkpoint(tmp_path):
    """linear-probe with `samples`: written into the data root when missing, reused after;
    `checkpoint_from_run` picks the run's newest checkpoint, or the profile's model when
    the run has written none."""
    from emotionclip.evaluation.run import load_model
    from emotionclip.models.checkpoint import save_checkpoint
    from emotionclip.training.checkpoint import checkpoint_dir
    from flows.linear_probe import linear_probe

    model = load_model(None, None, "tiny", "cpu", False, None).model
    run = tmp_path / "pretrain-run"
    for step in (1, 2):
        save_checkpoint(Path(checkpoint_dir(run)) / f"step-{step:09d}.pt", model, step=step)
    data = tmp_path / "data"
    kw = dict(profile="tiny", samples=["emotic", "liris"], data_root=str(data), det_imgsz=64, batch_size=8)
    res = linear_probe({}, str(tmp_path / "out1"), checkpoint_from_run=str(run), **kw)
    assert res["skipped"] == {"emotic": 0, "liris": 0}
    markers = {d: (data / "eval-samples" / d / MARKER).stat().st_mtime_ns for d in ("emotic", "liris")}
    df = pd.read_parquet(tmp_path / "out1" / "results.parquet")
    assert set(df.dataset) == {"emotic", "liris"} and set(df.model) == {"step-000000002.pt"}

    res = linear_probe({}, str(tmp_path / "out2"), checkpoint_from_run=str(tmp_path / "no-run"), **kw)
    assert {d: (data / "eval-samples" / d / MARKER).stat().st_mtime_ns for d in markers} == markers
    df = pd.read_parquet(tmp_path / "out2" / "results.parquet")
    assert set(df.model) == {"profile:tiny:emotionclip-tiny-vit"}
