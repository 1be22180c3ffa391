"""Training against bad data and bad disks: broken sentiment logits, a batch the
sentiment weights leave without negatives, a diverged loss, missing frame stores,
truncated checkpoints, checkpoint pruning and a full disk. Tiny model on CPU."""

from __future__ import annotations

import errno
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emotionclip.core.schemas import LOGIT_COLUMNS
from emotionclip.models import TINY_MODEL_NAME, EmotionCLIP, get_tokenizer, load_checkpoint, save_checkpoint
from emotionclip.models import checkpoint as model_ckpt
from emotionclip.training import checkpoint as ckpt
from emotionclip.training.config import make_config
from emotionclip.training.dataset import ClipDataset, collate_clips
from emotionclip.training.errors import BadBatchError, TrainingInputError
from emotionclip.training.loop import build_model, load_catalog_for, train
from emotionclip.training.state import setup
from emotionclip.training.step import optimizer_step
from training_data import write_manifest


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    manifest = write_manifest(df, tmp_path_factory.mktemp("faults") / "clips-00000.parquet")
    return root, manifest, df


def _config(corpus, out, **kw):
    root, manifest, _ = corpus
    values = dict(manifests=str(manifest), out_dir=str(out), profile="tiny", data_root=str(root), batch_size=2,
                  num_workers=0, epochs=1, log_every_steps=1, num_frames=2, temporal_dropout=0.0, warmup_steps=0,
                  lr_encoder=1e-4, lr_temporal=1e-4)
    values.update(kw)
    return make_config("paper", **values)


def _dataset(cfg, df, model):
    """A ClipDataset straight from a DataFrame: no manifest reader, so nothing
    upstream rejects the rows this file breaks on purpose."""
    cat = load_catalog_for(cfg)
    return ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME),
                       preprocess=model.preprocess_cfg, num_frames=cfg.num_frames, seed=cfg.seed)


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_model(cfg, load_catalog_for(cfg), torch.device("cpu"))


def _first_batch(state):
    order = state.sampler.epoch_indices(0)
    return collate_clips(state.dataset.__getitems__(order[: state.micro_batch]))


# -- sentiment logits and the loss guard ------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_sentiment_logits_stop_training_before_the_first_step(corpus, tmp_path, bad):
    cfg = _config(corpus, tmp_path, max_steps=1)
    df = corpus[2].copy()
    df.loc[df["clip_id"] == "vid1:2", "logit_joy"] = bad
    model = _model(cfg)
    expected = r"1 of 8 clips have NaN or infinite sentiment logits \(clips vid1:2\)"
    with pytest.raises(TrainingInputError, match=expected):
        train(cfg, dataset=_dataset(cfg, df, model), model=model)
    assert not (tmp_path / "checkpoints").exists()  # no step was taken


@pytest.mark.parametrize("bad", [math.nan, math.inf, 3e38])
def test_loss_guard_names_the_clips_whose_soft_labels_are_broken(corpus, tmp_path, bad):
    # rows that turn bad after the start-up check (a dataset changed in place): the step
    # itself refuses them. 3e38 is finite, but its softmax and KL divergences are not.
    cfg = _config(corpus, tmp_path)
    model = _model(cfg)
    ds = _dataset(cfg, corpus[2], model)
    state = setup(cfg, dataset=ds, model=model)
    batch = _first_batch(state)
    row = int(batch["index"][1])
    batch["sentiment"][1, 3] = bad
    if bad == 3e38:
        batch["sentiment"][1, 0] = -3e38
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    with pytest.raises(BadBatchError, match="step 1: .*sentiment") as err:
        optimizer_step(state, iter([batch]))
    assert err.value.clip_ids == [ds.clip_ids[row]] and ds.clip_ids[row] in str(err.value)
    after = dict(state.model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before)  # no optimizer step


def test_identical_sentiment_in_a_batch_is_a_degenerate_loss(corpus, tmp_path):
    # every pair's KL is 0, so eq. 6 gives every negative an infinite weight: the loss is
    # exactly 0 whatever the features, and the step learns nothing
    cfg = _config(corpus, tmp_path, max_steps=1)
    df = corpus[2].copy()
    df[LOGIT_COLUMNS] = np.tile(np.arange(7, dtype=np.float64), (len(df), 1))
    model = _model(cfg)
    with pytest.raises(BadBatchError, match="identical sentiment.*loss is 0") as err:
        train(cfg, dataset=_dataset(cfg, df, model), model=model)
    assert len(err.value.clip_ids) == 2 and all(c in str(err.value) for c in err.value.clip_ids)
    # the plain CLIP loss (beta 0) does not use the sentiment: the same data trains
    ok = cfg.model_copy(update={"beta": 0.0, "out_dir": str(tmp_path / "beta0")})
    model = _model(ok)
    assert math.isfinite(train(ok, dataset=_dataset(ok, df, model), model=model).last_loss)


def test_non_finite_loss_names_the_batch(corpus, tmp_path):
    cfg = _config(corpus, tmp_path)
    model = _model(cfg)
    state = setup(cfg, dataset=_dataset(cfg, corpus[2], model), model=model)
    batch = _first_batch(state)
    with torch.no_grad():
        state.model.logit_scale.fill_(math.nan)  # a diverged model, finite data
    with pytest.raises(FloatingPointError, match="step 1: loss is nan on clips vid") as err:
        optimizer_step(state, iter([batch]))
    ids = [state.dataset.clip_ids[int(i)] for i in batch["index"]]
    assert all(c in str(err.value) for c in ids)


# -- frame stores ------------------------------------------------------------------------
def test_cli_train_missing_frame_stores_is_one_line_and_exit_2(corpus, tmp_path):
    from typer.testing import CliRunner

    from emotionclip.cli import app

    _, manifest, _ = corpus
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    res = CliRunner().invoke(app, ["train", "--manifests", str(manifest), "--out", str(tmp_path / "out"),
                                   "--profile", "tiny", "--data-root", str(empty), "--max-steps", "1",
                                   "--set", "batch_size=2", "--set", "num_workers=0", "--set", "num_frames=2"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    line = errors[0]
    assert "2 of 2 videos named by the manifests have no frame store" in line
    assert str(empty / "videos" / "vid0" / "frames.zip") in line and "frames stage" in line and "--data-root" in line


# -- resume ------------------------------------------------------------------------------
def test_resume_latest_skips_a_truncated_newest_checkpoint(corpus, tmp_path, caplog):
    cfg = _config(corpus, tmp_path, max_steps=2, ckpt_every_steps=1)
    train(cfg)
    newest = tmp_path / "checkpoints" / "step-000000002.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a copy or a disk that gave out half way
    caplog.set_level(logging.INFO, logger="emotionclip.training.checkpoint")
    result = train(cfg.model_copy(update={"resume": "latest", "max_steps": 3}))
    assert result.step == 3
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipping checkpoint" in m and m.count("step-000000002.pt") == 1 and "unreadable" in m
               for m in skipped), skipped
    assert any("resumed from" in r.getMessage() and "step-000000001.pt at step 1" in r.getMessage()
               for r in caplog.records)


def test_resume_latest_without_checkpoint_says_it_starts_fresh(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotionclip.training.checkpoint")
    assert ckpt.load_resume(_config(corpus, tmp_path, resume="latest")) is None
    assert "no checkpoint under" in caplog.text and "starting fresh" in caplog.text


def test_resume_from_unreadable_checkpoints_is_a_clear_error(corpus, tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "step-000000001.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(TrainingInputError, match="none of the 1 checkpoints .* is readable"):
        ckpt.load_resume(_config(corpus, tmp_path, resume="latest"))
    with pytest.raises(TrainingInputError, match="--resume .*step-000000001.pt: cannot resume from it"):
        ckpt.load_resume(_config(corpus, tmp_path, resume=str(d / "step-000000001.pt")))
    with pytest.raises(TrainingInputError, match="no such checkpoint"):
        ckpt.load_resume(_config(corpus, tmp_path, resume=str(d / "nope.pt")))


# -- pruning -----------------------------------------------------------------------------
_RUN = ["step-000000001.pt", "epoch-0000-step-000000002.pt", "step-000000003.pt", "epoch-0001-step-000000004.pt",
        "step-000000005.pt", "epoch-0002-step-000000006.pt", "step-000000007.pt", "epoch-0003-step-000000008.pt"]


@pytest.mark.parametrize("keep_epochs, left", [
    (False, ["step-000000007.pt", "epoch-0003-step-000000008.pt"]),
    (True, ["epoch-0000-step-000000002.pt", "epoch-0001-step-000000004.pt", "epoch-0002-step-000000006.pt",
            "step-000000005.pt", "step-000000007.pt", "epoch-0003-step-000000008.pt"]),
    (2, ["epoch-0001-step-000000004.pt", "epoch-0002-step-000000006.pt", "step-000000007.pt",
         "epoch-0003-step-000000008.pt"]),
])
def test_pruning_keeps_the_last_k_plus_the_epoch_ends_asked_for(tmp_path, keep_epochs, left):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for name in _RUN:
        (d / name).write_bytes(b"x")
    removed = ckpt.prune_checkpoints(tmp_path, 2, keep_epochs)
    assert [p.rsplit("/", 1)[-1] for p in ckpt.list_checkpoints(tmp_path)] == sorted(
        left, key=lambda n: (int(n[-12:-3]), n.startswith("epoch")))
    assert len(removed) == len(_RUN) - len(left)


def test_a_run_of_one_step_epochs_keeps_only_the_last_k(corpus, tmp_path):
    # 8 clips, batch 8: every step ends an epoch; epoch ends used to stay forever
    result = train(_config(corpus, tmp_path, batch_size=8, epochs=3, keep_checkpoints=1))
    assert result.step == 3
    assert os.listdir(tmp_path / "checkpoints") == ["epoch-0002-step-000000003.pt"]
    kept = train(_config(corpus, tmp_path / "kept", batch_size=8, epochs=3, keep_checkpoints=1,
                         keep_epoch_checkpoints=2))
    assert sorted(os.listdir(tmp_path / "kept" / "checkpoints")) == ["epoch-0001-step-000000002.pt",
                                                                      "epoch-0002-step-000000003.pt"]
    assert kept.step == 3


# -- a full disk -------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (every write: ENOSPC)")
def test_disk_full_while_saving_is_a_clear_oserror_and_leaves_nothing(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = EmotionCLIP.from_openclip(TINY_MODEL_NAME, subject_mode="sap")
    final = tmp_path / "checkpoints" / "step-000000001.pt"
    save_checkpoint(final, model, step=1)  # an older good copy under the same name
    good = final.read_bytes()
    temps = []

    def full_disk_temp(path: Path) -> Path:
        # the real write goes to a device whose every write fails with ENOSPC
        tmp = path.with_name(f".{path.name}.tmp-full")
        os.symlink("/dev/full", tmp)
        temps.append(tmp)
        return tmp

    monkeypatch.setattr(model_ckpt, "_temp_path", full_disk_temp)
    with pytest.raises(OSError) as err:
        save_checkpoint(final, model, step=2)
    assert err.value.errno == errno.ENOSPC
    msg = str(err.value)
    assert f"not enough space to save checkpoint to {final}" in msg and " free, about " in msg and "needed" in msg
    assert "inline_container" not in msg
    assert temps and not any(os.path.lexists(t) for t in temps)  # the temporary file is gone
    assert sorted(os.listdir(final.parent)) == [final.name] and final.read_bytes() == good
    assert load_checkpoint(final)["step"] == 1
