"""The in-training linear probe: the evaluation package's probe on the live model
at epoch ends (tiny model, a miniature BoLD in its published layout, no detector)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from emotionclip.evaluation import sample as L
from emotionclip.models import load_checkpoint
from emotionclip.training import checkpoint as ckpt
from emotionclip.training.config import make_config
from emotionclip.training.loop import train
from emotionclip.training.metrics import read_jsonl
from training_data import write_manifest


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    own = tmp_path_factory.mktemp("probe")
    manifest = write_manifest(df.groupby("video_id").head(2), own / "clips-00000.parquet")
    bold = L.make_bold(own / "bold", n_train=6, n_val=4)
    return root, manifest, bold


def _config(corpus, out, **kw):
    root, manifest, bold = corpus
    values = dict(manifests=str(manifest), out_dir=str(out), profile="tiny", data_root=str(root), batch_size=2,
                  num_workers=0, epochs=2, num_frames=2, log_every_steps=1, lr_encoder=1e-3, lr_temporal=1e-3,
                  warmup_steps=0, probe_dataset="bold", probe_root=str(bold), probe_detect=False, probe_batch_size=4)
    values.update(kw)
    return make_config("paper", **values)


def _tb_tags(folder) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_probe_every_epoch_on_the_live_model(corpus, tmp_path):
    cfg = _config(corpus, tmp_path / "probed")
    result = train(cfg)
    assert result.step == 4 and result.epoch == 2
    epochs = read_jsonl(tmp_path / "probed" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert e["probe"]["dataset"] == "bold" and e["probe"]["skipped"] == 0
        assert set(e["probe"]["metrics"]) == {"val/mAP", "val/AUC", "val/R2"}
        assert all(isinstance(v, float) for v in e["probe"]["metrics"].values())
    # the results tables of the evaluation flow, one per epoch, each from that epoch's weights
    fps = [pd.read_parquet(e["probe"]["results"])["model_fingerprint"].iloc[0] for e in epochs]
    assert fps[0] != fps[1]
    from emotionclip.evaluation.features import model_fingerprint
    from emotionclip.models import load_model

    last = load_model(result.checkpoint)
    assert model_fingerprint(last)[:16] == fps[1]
    assert {"probe/bold/val/mAP", "probe/bold/val/R2", "epoch/loss"} <= _tb_tags(tmp_path / "probed" / "tensorboard")
    # step lines stay step lines (readers expect a loss on every one)
    assert all("loss" in r for r in read_jsonl(tmp_path / "probed" / "metrics.jsonl"))

    # probing leaves training untouched: train mode, RNG streams (dropout, crops) restored
    plain = train(cfg.model_copy(update={"out_dir": str(tmp_path / "plain"), "probe_dataset": None}))
    a = load_checkpoint(result.checkpoint)["model"]
    b = load_checkpoint(plain.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in result.history] == [r["loss"] for r in plain.history]
    assert "probe" not in read_jsonl(tmp_path / "plain" / "epochs.jsonl")[0]


def test_probe_every_n_epochs_and_config_checks(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, epochs=2, probe_every_epochs=2, probe_limit=3, max_steps=4)
    train(cfg)
    epochs = read_jsonl(tmp_path / "epochs.jsonl")
    assert ["probe" in e for e in epochs] == [False, True]
    assert sorted(os.listdir(tmp_path / "probe")) == ["cache", "epoch-0001"]
    df = pd.read_parquet(epochs[1]["probe"]["results"])
    assert (df["n_train"] == 3).all() and (df["n_eval"] == 3).all()  # probe_limit per split
    with pytest.raises(ValueError, match="probe_root"):
        make_config("paper", probe_dataset="bold")
    with pytest.raises(ValueError, match="unknown probe_dataset"):
        make_config("paper", probe_dataset="nope", probe_root="/x")
    assert ckpt.latest_checkpoint(tmp_path).endswith("epoch-0001-step-000000004.pt")
