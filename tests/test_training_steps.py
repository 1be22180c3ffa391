"""The pieces of the training loop alone: the per-epoch loader, one optimizer step
(against a hand-computed SNCE loss), checkpoint save/resume, the metrics rows,
and `run_training`'s outcome. Tiny model on CPU."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

from emotionclip.training import checkpoint as ckpt
from emotionclip.training import launch
from emotionclip.training import loader as loader_mod
from emotionclip.training.config import make_config
from emotionclip.training.dataset import collate_clips
from emotionclip.training.loader import build_loader, epoch_batches
from emotionclip.training.loop import TrainResult, train
from emotionclip.training.metrics import Throughput, epoch_row, step_row
from emotionclip.training.parts import parameter_part
from emotionclip.training.sampler import ResumableSampler
from emotionclip.training.state import micro_batch_size, setup
from emotionclip.training.step import optimizer_step
from training_data import write_manifest


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    manifest = write_manifest(df, tmp_path_factory.mktemp("steps") / "clips-00000.parquet")
    return root, manifest


def _config(corpus, out, **kw):
    root, manifest = corpus
    # no dropout, no warm-up (lr 0 at step 0 would move nothing), lrs large enough to see
    values = dict(manifests=str(manifest), out_dir=str(out), profile="tiny", data_root=str(root), batch_size=2,
                  num_workers=0, epochs=2, log_every_steps=1, num_frames=2, temporal_dropout=0.0, warmup_steps=0,
                  lr_encoder=1e-3, lr_temporal=1e-3, lr_gain_bias=1e-3, lr_logit_scale=1e-3, beta=0.1)
    values.update(kw)
    return make_config("paper", **values)


def _batch(state, positions):
    order = state.sampler.epoch_indices(0)
    return collate_clips(state.dataset.__getitems__([order[p] for p in positions]))


def _snce_by_hand(v, t, s, scale, beta):
    """Eq. 5-7 written out in float64: logits_ij = scale v_i.t_j - beta / KL(s_i || s_j)
    (0 on the diagonal), the mean of the video->text and text->video cross-entropies."""
    v, t, s = v.double(), t.double(), s.double()
    n = v.shape[0]
    logp = torch.log_softmax(s, dim=-1)
    p = logp.exp()
    w = [[0.0 if i == j else beta / float((p[i] * (logp[i] - logp[j])).sum()) for j in range(n)] for i in range(n)]
    vt = [[scale * float(v[i] @ t[j]) - w[i][j] for j in range(n)] for i in range(n)]
    tv = [[scale * float(t[i] @ v[j]) - w[i][j] for j in range(n)] for i in range(n)]

    def ce(rows):
        return sum(math.log(sum(math.exp(x) for x in r)) - r[i] for i, r in enumerate(rows)) / n

    return (ce(vt) + ce(tv)) / 2


def _hand_loss(state, batch, beta):
    from emotionclip.training.step import device_batch

    m = state.model
    frames, masks, tokens, sentiment = device_batch(batch, state.device, m.preprocess_cfg.mean, m.preprocess_cfg.std)
    with torch.no_grad():
        v, t, scale = m(frames, masks, tokens)
    return _snce_by_hand(v, t, sentiment, float(scale), beta)


class _EpochProbe(torch.utils.data.Dataset):
    """Items say which epoch the copy of the dataset that loaded them was set to."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(i), "epoch": torch.tensor(self.epoch)}


def test_one_loader_carries_each_epoch_to_forked_workers(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, num_workers=2)
    ds = _EpochProbe(12)
    sampler = ResumableSampler(len(ds), seed=cfg.seed)
    loader = build_loader(ds, sampler, cfg, torch.device("cpu"), 2, collate_fn=None)
    assert not loader.persistent_workers
    for epoch, start in ((0, 0), (1, 4), (2, 0)):
        rng = torch.get_rng_state()
        batches = list(epoch_batches(loader, epoch, start=start, seed=cfg.seed))
        assert torch.equal(torch.get_rng_state(), rng)  # the global RNG stays the model's
        assert torch.cat([b["index"] for b in batches]).tolist() == sampler.epoch_indices(epoch)[start:]
        assert {int(e) for b in batches for e in b["epoch"]} == {epoch}  # the workers saw set_epoch


def test_one_step_moves_only_trainable_parameters_by_the_hand_computed_loss(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, ablation="text-frozen")
    state = setup(cfg)
    state.model.train()
    batch = _batch(state, [0, 1])
    expected = _hand_loss(state, batch, cfg.beta)
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    trainable = {n for n, p in state.model.named_parameters() if p.requires_grad}
    frozen = set(before) - trainable
    assert frozen and all(parameter_part(n) == "text" for n in frozen)

    out = optimizer_step(state, iter([batch]))

    assert out.loss == pytest.approx(expected, rel=1e-5) and out.data_wait_s >= 0
    after = dict(state.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed <= trainable  # the frozen text tower did not move
    assert len(changed) > len(trainable) // 2 and "clip.logit_scale" in changed
    assert all(p.grad is None for p in state.model.parameters())  # gradients cleared for the next step
    assert state.scheduler.step_count == 1
    assert state.step == 0 and state.step_in_epoch == 0  # the counters are the caller's


def test_accumulated_step_takes_its_micro_batches_and_averages_their_losses(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, batch_size=4, grad_accum_steps=2)
    state = setup(cfg)
    assert state.micro_batch == 2 and state.steps_per_epoch == 2
    state.model.train()
    micro = [_batch(state, [0, 1]), _batch(state, [2, 3]), _batch(state, [4, 5])]
    expected = [_hand_loss(state, b, cfg.beta) for b in micro[:2]]
    batches = iter(micro)
    out = optimizer_step(state, batches)
    assert out.loss == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert next(batches) is micro[2]  # exactly grad_accum_steps micro-batches taken


def test_checkpoint_save_and_resume_round_trip(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, keep_checkpoints=1, precision="fp16")
    state = setup(cfg)
    state.model.train()
    for k in range(2):
        optimizer_step(state, iter([_batch(state, [2 * k, 2 * k + 1])]))
        state.step += 1
        state.step_in_epoch += 1
        path = ckpt.save_train_checkpoint(state, ckpt.step_checkpoint_name(state.step))
    assert state.last_checkpoint == path
    assert [p.rsplit("/", 1)[-1] for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000002.pt"]  # pruned
    next_draw = torch.rand(4)  # what the interrupted run would draw next

    fresh = setup(cfg)
    assert ckpt.find_resume(cfg.model_copy(update={"resume": "latest"})) == path
    ckpt.resume(fresh, path)
    assert torch.equal(torch.rand(4), next_draw)  # RNG streams restored
    assert (fresh.step, fresh.epoch, fresh.step_in_epoch) == (2, 0, 2)
    assert fresh.sample_in_epoch == 4 and fresh.last_checkpoint == path
    a, b = state.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.scheduler.step_count == 2 and fresh.scaler.state_dict() == state.scaler.state_dict()
    sa, sb = state.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)

    # an epoch-end checkpoint resumes at the start of the next epoch
    fresh.step_in_epoch = fresh.steps_per_epoch
    end = ckpt.save_train_checkpoint(fresh, ckpt.epoch_checkpoint_name(0, fresh.step))
    again = setup(cfg)
    ckpt.resume(again, end)
    assert (again.epoch, again.step_in_epoch, again.sample_in_epoch) == (1, 0, 0)


def test_a_run_builds_one_loader_and_one_iterator_per_epoch(corpus, tmp_path, monkeypatch):
    counts = {"built": 0, "iters": 0}

    class Counting(torch.utils.data.DataLoader):
        def __init__(self, *a, **kw):
            counts["built"] += 1
            super().__init__(*a, **kw)

        def __iter__(self):
            counts["iters"] += 1
            return super().__iter__()

    monkeypatch.setattr(loader_mod, "DataLoader", Counting)
    result = train(_config(corpus, tmp_path, batch_size=4, epochs=3, num_workers=1))
    assert result.step == 6 and result.epoch == 3
    assert counts == {"built": 1, "iters": 3}


def test_metrics_rows():
    now = [10.0]
    meter = Throughput(clock=lambda: now[0])
    meter.add(8, 0.5)
    meter.add(8, 0.5)
    now[0] = 14.0
    row = step_row(3, 1, 0.25, {"text_weight": 1e-3}, 14.3, meter)
    assert list(row) == ["step", "epoch", "loss", "lr", "logit_scale", "clips_per_s", "data_wait_frac"]
    assert row["clips_per_s"] == 4.0 and row["data_wait_frac"] == 0.25
    meter.reset()
    assert meter.rates() == {"clips_per_s": None, "data_wait_frac": None}  # no time elapsed
    e = epoch_row(1, 4, [1.0, 2.0], meter, "ck.pt")
    assert e["loss"] == 1.5 and e["checkpoint"] == "ck.pt" and list(e)[0:3] == ["epoch", "step", "loss"]
    assert epoch_row(1, 4, [], meter, None)["loss"] is None


def test_micro_batch_size_checks_divisibility():
    cfg = make_config("paper", batch_size=12, grad_accum_steps=3)
    assert micro_batch_size(cfg, 2) == 2
    with pytest.raises(ValueError, match="not divisible"):
        micro_batch_size(cfg, 5)


def test_run_training_returns_one_outcome_type(tmp_path, monkeypatch):
    import emotionclip.training.loop as loop

    cfg = make_config("paper", out_dir=str(tmp_path))
    done = TrainResult(step=3, epoch=1, last_loss=0.5, checkpoint="c.pt")
    monkeypatch.setattr(loop, "train", lambda config: done)
    outcome = launch.run_training(cfg, nproc=1)
    assert outcome.ok and outcome.returncode == 0 and outcome.result is done

    calls = []

    def fake_run(cmd, env):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    outcome = launch.run_training(cfg, nproc=2)
    assert not outcome.ok and outcome.returncode == 3 and outcome.result is None
    assert "--nproc_per_node=2" in calls[0] and (tmp_path / launch.CONFIG_FILE).exists()
