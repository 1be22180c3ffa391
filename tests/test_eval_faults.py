"""How the evaluation commands fail: a wrong dataset folder, every sample skipped,
a checkpoint evaluated with another profile's detector, MELD's known missing clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from emotionclip.evaluation import sample as L
from emotionclip.evaluation.datasets import Sample
from emotionclip.evaluation.features import FeatureStats
from emotionclip.evaluation.probes import ProbeConfig
from emotionclip.evaluation.run import NoUsableSamples, SplitFeatures, load_model, probe_dataset

# The CLI's call for --profile tiny: the same lru_cache entry as the other evaluation tests.
TINY = (None, None, "tiny", "cpu", False, None)


def _app():
    from emotionclip.cli.eval import app

    return app


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """One of our checkpoints, saved from the tiny profile's model."""
    from emotionclip.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny-ck.pt"
    save_checkpoint(path, load_model(*TINY).model)
    return path


# -- a wrong folder --------------------------------------------------------------------

@pytest.mark.parametrize("dataset, expected", [
    ("meld", "train_sent_emo.csv"),
    ("bold", "annotations/train.csv"),
    ("emotic", "Annotations/Annotations.mat"),
    ("moviegraphs", "mg/split.json"),
    ("liris", "MEDIAEVAL18-DevSet-Valence_Arousal-annotations"),
])
def test_run_on_an_empty_folder_names_the_folder_and_the_missing_file(tmp_path, dataset, expected):
    root = tmp_path / "empty"
    root.mkdir()
    res = CliRunner().invoke(_app(), ["run", dataset, "--root", str(root), "--profile", "tiny",
                                      "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert str(root) in lines[0] and expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_run_on_a_missing_folder_and_an_unknown_dataset(tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["run", "meld", "--root", str(tmp_path / "nope"), "--profile", "tiny",
                                 "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: --root {tmp_path / 'nope'}: no such folder"
    res = runner.invoke(_app(), ["run", "mled", "--root", str(tmp_path), "--profile", "tiny",
                                 "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown dataset 'mled'"), res.output


def test_run_on_a_layout_missing_its_second_split(tmp_path):
    """The train split parses but dev's annotations are gone: caught before any model is built."""
    root = L.make_meld(tmp_path / "meld", per_class=1)
    (root / "MELD.Raw" / "dev_sent_emo.csv").unlink()
    res = CliRunner().invoke(_app(), ["run", "meld", "--root", str(root), "--checkpoint", str(tmp_path / "x.pt"),
                                      "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--checkpoint" in res.stderr and "no such file" in res.stderr
    res = CliRunner().invoke(_app(), ["run", "meld", "--root", str(root), "--profile", "tiny",
                                      "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "dev_sent_emo.csv" in res.stderr and str(root) in res.stderr


# -- every sample skipped --------------------------------------------------------------

def test_skip_summary_counts_by_error_type_and_quotes_the_commonest():
    stats = FeatureStats(skipped=[
        {"id": "a", "media": "/d/a.mp4", "reason": "missing", "error": "missing"},
        {"id": "b", "media": "/d/b.mp4", "reason": "[eval-features] video b: /d/b.mp4: ModelNotAvailable: no\nweights",
         "error": "ModelNotAvailable"},
        {"id": "c", "media": "/d/c.mp4", "reason": "[eval-features] video c: /d/c.mp4: ModelNotAvailable: other",
         "error": "ModelNotAvailable"},
    ])
    assert stats.skip_summary(3) == ("3 of 3 skipped (ModelNotAvailable: 2, missing: 1); first error: "
                                     "[eval-features] video b: /d/b.mp4: ModelNotAvailable: no weights")
    only_missing = FeatureStats(skipped=stats.skipped[:1])
    assert only_missing.skip_summary(1).endswith("first error: [eval-features] video a: /d/a.mp4: missing")
    assert FeatureStats().skip_summary(0) == "the split lists no samples"


def test_an_empty_evaluation_split_is_named_too():
    s = [Sample(f"s{i}", "train", f"/d/{i}.mp4", "video", i % 2) for i in range(4)]
    feats = np.eye(4, dtype=np.float32)
    gone = FeatureStats(skipped=[{"id": "t0", "media": "/d/t0.mp4", "reason": "empty", "error": "empty"}])
    data = {"train": SplitFeatures("train", s, feats, FeatureStats()),
            "dev": SplitFeatures("dev", s, feats, FeatureStats()),
            "test": SplitFeatures("test", [], np.zeros((0, 0), np.float32), gone)}
    with pytest.raises(NoUsableSamples, match=r"^meld: no usable test samples: 1 of 1 skipped \(empty: 1\); "
                                              r"first error: \[eval-features\] video t0: /d/t0.mp4: empty$"):
        probe_dataset("meld", data, ProbeConfig())


def test_checkpoint_alone_offline_names_the_first_sample_error(tmp_path, tiny_checkpoint):
    """--checkpoint without --profile takes the catalog's (paper) detector, which is not
    available offline: every sample fails, and the message says why."""
    root = L.make_moviegraphs(tmp_path / "mg")
    res = CliRunner().invoke(_app(), ["run", "moviegraphs", "--root", str(root), "--checkpoint", str(tiny_checkpoint),
                                      "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    err = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(err) == 1, res.stderr
    assert err[0].startswith("error: moviegraphs: no usable training samples: 2 of 2 skipped (ModelNotAvailable: 2); "
                             "first error: [eval-features] video tt0000001#0: "), err[0]
    assert "ModelNotAvailable: the detector weights 'yolo11l.pt'" in err[0]


# -- a checkpoint with the tiny profile's detector ------------------------------------

def test_checkpoint_with_profile_tiny_runs_offline_with_the_tiny_detector(tmp_path, tiny_checkpoint):
    import pandas as pd

    root = L.make_moviegraphs(tmp_path / "mg")
    out = tmp_path / "out"
    res = CliRunner().invoke(_app(), ["run", "moviegraphs", "--root", str(root), "--checkpoint", str(tiny_checkpoint),
                                      "--profile", "tiny", "--out", str(out), "--det-imgsz", "64"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {s: v["computed"] for s, v in summary["features"].items()} == {"train": 2, "val": 2, "test": 2}
    assert all(not v["skipped"] for v in summary["features"].values())
    df = pd.read_parquet(out / "results-moviegraphs.parquet")
    assert (df["model"] == tiny_checkpoint.name).all()  # the checkpoint's weights, not the profile's model
    assert list((out / "cache" / "work" / "detections").glob("*.parquet"))  # the tiny detector ran

    res = CliRunner().invoke(_app(), ["run", "moviegraphs", "--root", str(root), "--checkpoint", str(tiny_checkpoint),
                                      "--official-checkpoint", str(tiny_checkpoint), "--out", str(out)])
    assert res.exit_code == 2 and "not both" in res.stderr


# -- MELD's known missing clips --------------------------------------------------------

def test_inspect_meld_release_missing_only_its_known_clips_passes_with_a_note(tmp_path):
    root = L.make_meld(tmp_path / "meld", per_class=1)  # the CSVs list dia125_utt3 / dia110_utt7, absent on disk
    runner = CliRunner()
    res = runner.invoke(_app(), ["inspect", "meld", "--root", str(root)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is True
    assert report["splits"]["train"]["known_missing"] == ["MELD.Raw/train_splits/dia125_utt3.mp4"]
    assert report["splits"]["dev"]["known_missing"] == ["MELD.Raw/dev_splits_complete/dia110_utt7.mp4"]
    notes = [x for x in res.stderr.splitlines() if x.startswith("note: ")]
    assert len(notes) == 2 and "dia125_utt3" in notes[0] and "dia110_utt7" in notes[1]
    assert "MELD.Raw release" in notes[0]

    # one more clip gone: that one is a real problem
    (root / "MELD.Raw" / "train_splits" / "dia2_utt0.mp4").unlink()
    res = runner.invoke(_app(), ["inspect", "meld", "--root", str(root)])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is False
    assert report["splits"]["train"]["missing"] == ["MELD.Raw/train_splits/dia125_utt3.mp4",
                                                    "MELD.Raw/train_splits/dia2_utt0.mp4"]
    assert report["splits"]["train"]["known_missing"] == ["MELD.Raw/train_splits/dia125_utt3.mp4"]


def test_inspect_meld_complete_copy_has_no_note(tmp_path):
    root = L.make_meld(tmp_path / "meld", per_class=1, missing=False)
    res = CliRunner().invoke(_app(), ["inspect", "meld", "--root", str(root)])
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert json.loads(res.stdout)["notes"] == []


# -- the flow -------------------------------------------------------------------------

def test_flow_takes_a_checkpoint_with_a_profile_and_checks_folders_before_the_model(tmp_path, tiny_checkpoint):
    import pandas as pd

    from emotionclip.evaluation.datasets import DatasetLayoutError
    from flows.linear_probe import linear_probe

    empty = tmp_path / "empty"
    empty.mkdir()
    # the folder is checked first: a wrong one is named before a (here absent) checkpoint is read
    with pytest.raises(DatasetLayoutError, match="train_sent_emo.csv"):
        linear_probe({"meld": str(empty)}, str(tmp_path / "o"), checkpoint=str(tmp_path / "absent.pt"))

    root = L.make_moviegraphs(tmp_path / "mg")
    out = tmp_path / "out"
    res = linear_probe({"moviegraphs": str(root)}, str(out), checkpoint=str(tiny_checkpoint), profile="tiny",
                       det_imgsz=64)
    assert res["rows"] == 2 and res["skipped"] == {"moviegraphs": 0}
    df = pd.read_parquet(out / "results.parquet")
    assert (df["model"] == tiny_checkpoint.name).all()
    assert list((out / "cache" / "work" / "detections").glob("*.parquet"))
