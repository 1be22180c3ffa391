"""The training loop on CPU with the tiny OpenCLIP config: learning, exact resume,
checkpoints and metrics files, two-process DDP (gloo) against one process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from emotionclip.core.manifest_store import read_manifests
from emotionclip.models import TINY_MODEL_NAME, get_tokenizer, load_checkpoint, load_model
from emotionclip.training.dataset import ClipDataset
from emotionclip.training import checkpoint as ckpt
from emotionclip.training.config import make_config, read_config
from emotionclip.training.launch import torchrun_command, write_config
from emotionclip.training.loop import build_model, load_catalog_for, train
from emotionclip.training.metrics import read_jsonl
from training_data import write_manifest


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    manifest = write_manifest(df, tmp_path_factory.mktemp("train") / "clips-00000.parquet")
    return root, manifest


def _config(corpus, out, **kw):
    root, manifest = corpus
    # 2 frames per clip keeps CPU steps cheap (the 8-frame sampling is tested with the loader)
    values = dict(manifests=str(manifest), out_dir=str(out), profile="tiny", data_root=str(root),
                  batch_size=2, num_workers=0, epochs=3, log_every_steps=1, ckpt_every_steps=3, num_frames=2)
    values.update(kw)
    return make_config("paper", **values)


def _state(out, name=None):
    path = ckpt.latest_checkpoint(out) if name is None else f"{ckpt.checkpoint_dir(out)}/{name}"
    return load_checkpoint(path)["model"]


def test_loss_decreases_on_a_fixed_batch(corpus, tmp_path):
    # 2 clips, batch 2: every step sees the same clips (evaluation crops: fixed pixels).
    # beta=0 (plain InfoNCE): with beta=10 two clips' sentiment weights remove the
    # only negative and the loss starts near 0.
    root, manifest = corpus
    cfg = _config(corpus, tmp_path, epochs=6, batch_size=2, warmup_steps=0, temporal_dropout=0.0, beta=0.0,
                  lr_gain_bias=1e-3, lr_encoder=1e-3, lr_temporal=1e-3, lr_logit_scale=1e-3, min_lr=1e-3)
    cat = load_catalog_for(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, cat, torch.device("cpu"))
    ds = ClipDataset(read_manifests(manifest).iloc[:2], lambda v: cat.artifact("frames", v),
                     get_tokenizer(TINY_MODEL_NAME), preprocess=model.preprocess_cfg, train=False, num_frames=cfg.num_frames)
    result = train(cfg, dataset=ds, model=model)
    losses = [r["loss"] for r in result.history]
    assert result.step == 6 and len(losses) == 6
    assert losses[-1] < losses[0] - 0.05


def test_tiny_profile_lowers_the_loss_in_a_few_steps(corpus, tmp_path):
    """The tiny profile's warm-up and learning rates (config._PROFILE_VALUES) train the
    random-weight model within the demo's 4 steps; the paper's (2,500 warm-up steps, 1e-8
    and 1e-6 for the encoder and temporal weights) leave the loss where it was. All 8
    clips in every batch, evaluation crops, no dropout, CPU, fixed seed: every step sees
    the same pixels, so the loss moves by learning only, the same on every run."""
    root, manifest = corpus

    def losses(out, **kw):
        cfg = _config(corpus, out, epochs=4, batch_size=8, temporal_dropout=0.0, device="cpu", **kw)
        cat = load_catalog_for(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, cat, torch.device("cpu"))
        ds = ClipDataset(read_manifests(manifest), lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME),
                         preprocess=model.preprocess_cfg, train=False, num_frames=cfg.num_frames)
        return [r["loss"] for r in train(cfg, dataset=ds, model=model).history]

    tiny = losses(tmp_path / "tiny")
    assert len(tiny) == 4 and tiny[-1] < 0.8 * tiny[0], tiny  # measured: -29 %
    paper = losses(tmp_path / "paper", warmup_steps=2500, lr_encoder=1e-8, lr_temporal=1e-6)
    assert paper[0] == tiny[0] and paper[-1] == pytest.approx(paper[0], rel=1e-2), paper


def test_checkpoints_metrics_and_schedule(corpus, tmp_path):
    # the paper's warm-up (the tiny profile has none)
    cfg = _config(corpus, tmp_path, epochs=2, batch_size=4, ckpt_every_steps=1, keep_checkpoints=1,
                  keep_epoch_checkpoints=True, warmup_steps=2500)
    result = train(cfg)
    assert result.step == 4 and result.epoch == 2  # 8 clips / batch 4 = 2 steps per epoch
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    # step 1 was pruned by step 3 (keep 1); epoch ends stay
    assert names == ["epoch-0000-step-000000002.pt", "epoch-0001-step-000000004.pt", "step-000000003.pt"]
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 5))
    assert set(rows[0]) >= {"step", "loss", "lr", "logit_scale", "clips_per_s", "data_wait_frac"}
    assert set(rows[0]["lr"]) == {"frame_gain_bias", "frame_weight", "text_gain_bias", "text_weight",
                                  "temporal_gain_bias", "temporal_weight", "logit_scale"}
    assert 0 <= rows[0]["data_wait_frac"] <= 1
    assert rows[1]["lr"]["frame_gain_bias"] > rows[0]["lr"]["frame_gain_bias"]  # warming up per step
    epochs = read_jsonl(tmp_path / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[1]["checkpoint"].endswith("epoch-0001-step-000000004.pt")
    # a run in one process writes its config too (torchrun's launcher always did)
    assert read_config(tmp_path / "train_config.json") == cfg
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    # the final checkpoint is a model checkpoint: load_model reads it (weights_only)
    model = load_model(result.checkpoint)
    assert float(model.logit_scale.detach()) <= cfg.logit_scale_max + 1e-6


def test_kill_and_resume_equals_uninterrupted(corpus, tmp_path):
    """6 steps across an epoch boundary, random crops and dropout on: stopping at
    step 3 and resuming gives bit-identical parameters."""
    full = _config(corpus, tmp_path / "full", max_steps=6, lr_encoder=1e-4, lr_temporal=1e-4, warmup_steps=2)
    train(full)
    part = full.model_copy(update={"out_dir": str(tmp_path / "part"), "max_steps": 3})
    r1 = train(part)
    assert r1.step == 3 and r1.checkpoint.endswith("step-000000003.pt")
    r2 = train(part.model_copy(update={"max_steps": 6, "resume": "latest"}))
    assert r2.step == 6
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the logged losses read as one run
    la = [r["loss"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_jsonl(tmp_path / "part" / "metrics.jsonl")]
    assert la == lb
    # training moved the parameters after the resume point: the check above can fail
    c = _state(tmp_path / "part", "step-000000003.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_latest_without_checkpoint_starts_fresh(corpus, tmp_path):
    r = train(_config(corpus, tmp_path, max_steps=1, resume="latest"))
    assert r.step == 1


def test_two_process_ddp_matches_one_process(corpus, tmp_path):
    """torchrun, 2 CPU processes (gloo), 2 clips each = one process on 4 clips.
    beta 0.1: the sentiment weights act but leave every negative in, so the loss stays
    far from 0 (with beta 10 it is ~1e-6 and float32 rounding dominates a comparison).
    eps 1e-6: the attention key biases have an exactly-zero true gradient, and Adam with
    eps 1e-10 turns the rounding noise of that zero into full-size steps of random sign."""
    base = _config(corpus, tmp_path / "one", batch_size=4, max_steps=3, temporal_dropout=0.0,
                   lr_encoder=1e-4, lr_temporal=1e-4, warmup_steps=1, beta=0.1, eps=1e-6)
    train(base)
    ddp = base.model_copy(update={"out_dir": str(tmp_path / "two")})
    path = write_config(ddp)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(torchrun_command(path, 2), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    bad = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5)}
    assert not bad, bad
    assert json.loads(path.read_text())["batch_size"] == 4


def test_cli_train(corpus, tmp_path):
    root, manifest = corpus
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "emotionclip.cli", "train", "--manifests", str(manifest.parent), "--out", str(out),
           "--preset", "official-code", "--profile", "tiny", "--max-steps", "2", "--data-root", str(root),
           "--set", "batch_size=4", "--set", "num_workers=2", "--set", "num_frames=2",
           "--set", "log_every_steps=1"]
    from typer.testing import CliRunner

    from emotionclip.cli import app

    res = CliRunner().invoke(app, cmd[3:])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["step"] == 2
    res = CliRunner().invoke(app, cmd[3:] + ["--resume", "latest", "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    bad = CliRunner().invoke(app, ["train", "--manifests", str(manifest), "--out", str(out), "--preset", "nope"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output


def test_resolve_device_bare_cuda_means_this_ranks_gpu():
    # torch.cuda.set_device rejects a bare "cuda": it must become cuda:LOCAL_RANK
    from emotionclip.training.distributed import resolve_device

    assert resolve_device("cuda", 3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", 3) == torch.device("cuda", 1)
    assert resolve_device("cpu", 3) == torch.device("cpu")


def test_compiled_model_trains_like_eager(corpus, tmp_path):
    # torch.compile through Dynamo + AOT autograd (the "aot_eager" backend: the same
    # graph capture and backward as "inductor", without its slow C++ code generation
    # on CPU): the compiled run must reproduce the eager run's losses.
    kw = dict(epochs=1, max_steps=2, temporal_dropout=0.0, warmup_steps=0)
    from torch._dynamo.utils import counters

    eager = train(_config(corpus, tmp_path / "eager", **kw))
    counters.clear()
    compiled = train(_config(corpus, tmp_path / "compiled", compile=True, compile_backend="aot_eager", **kw))
    assert counters["stats"]["unique_graphs"] > 0  # Dynamo really captured the model
    assert compiled.step == eager.step == 2
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in eager.history], rel=1e-4, abs=1e-5)


def test_gradient_checkpointing_trains_like_plain(corpus, tmp_path):
    # recomputing activations in the backward must not change the numbers
    kw = dict(epochs=1, max_steps=2, temporal_dropout=0.0, warmup_steps=0, lr_encoder=1e-4, lr_temporal=1e-4)
    plain = train(_config(corpus, tmp_path / "plain", **kw))
    ckpt_run = train(_config(corpus, tmp_path / "gc", grad_checkpointing=True, **kw))
    assert [r["loss"] for r in ckpt_run.history] == pytest.approx([r["loss"] for r in plain.history], rel=1e-5)
    a, b = _state(tmp_path / "plain"), _state(tmp_path / "gc")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_gradient_accumulation_sums_the_micro_batch_gradients(corpus, tmp_path):
    """batch 4 as 2 micro-batches of 2: one optimizer step on the mean of the two
    micro-batches' loss gradients, reproduced here by hand from the same parts."""
    from emotionclip.models import SentimentGuidedLoss
    from emotionclip.models.transforms import normalize_frames
    from emotionclip.training.dataset import batch_masks, collate_clips
    from emotionclip.training.loop import build_dataset
    from emotionclip.training.optim import build_optimizer, build_scheduler, clamp_logit_scale
    from emotionclip.training.sampler import ResumableSampler

    cfg = _config(corpus, tmp_path / "accum", batch_size=4, grad_accum_steps=2, max_steps=1, epochs=1,
                  temporal_dropout=0.0, warmup_steps=0, lr_encoder=1e-3, lr_temporal=1e-3, lr_gain_bias=1e-3)
    result = train(cfg)
    assert result.step == 1

    torch.manual_seed(cfg.seed)  # as train(): the same initial weights
    cat = load_catalog_for(cfg)
    model = build_model(cfg, cat, torch.device("cpu")).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ds = build_dataset(cfg, cat, model)
    sampler = ResumableSampler(len(ds), seed=cfg.seed)
    sampler.set_epoch(0)
    order = list(sampler)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, len(ds) // cfg.batch_size)
    loss_fn = SentimentGuidedLoss(beta=cfg.beta, kl_direction=cfg.kl_direction)
    mean, std = model.preprocess_cfg.mean, model.preprocess_cfg.std
    for micro in (order[0:2], order[2:4]):
        batch = collate_clips(ds.__getitems__(micro))
        v, t, scale = model(normalize_frames(batch["frames"], mean, std).contiguous(), batch_masks(batch).float(),
                            batch["tokens"])
        (loss_fn(v, t, batch["sentiment"].float(), scale.float()) / 2).backward()
    opt.step()
    sched.step()
    clamp_logit_scale(model.named_parameters(), cfg.logit_scale_max)

    trained, manual = _state(tmp_path / "accum"), model.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the step moved the weights
    assert all(torch.allclose(trained[k], manual[k], rtol=1e-5, atol=1e-7) for k in trained)


def test_fp16_with_grad_scaler_resumes_exactly(corpus, tmp_path):
    """fp16 autocast + GradScaler (the official-code preset's precision; on CPU the
    same code path as on a GPU): the scaler's state is checkpointed and restored,
    so stopping after step 1 and resuming equals an uninterrupted run."""
    kw = dict(precision="fp16", temporal_dropout=0.0, lr_encoder=1e-4, lr_temporal=1e-4, warmup_steps=1)
    full = train(_config(corpus, tmp_path / "full", max_steps=3, **kw))
    assert all(math.isfinite(r["loss"]) for r in full.history)
    state = load_checkpoint(full.checkpoint)
    assert state["extra"]["scaler"]["scale"] > 0  # a real scaler, not the disabled stub
    part = _config(corpus, tmp_path / "part", max_steps=1, ckpt_every_steps=1, **kw)
    train(part)
    resumed = train(part.model_copy(update={"max_steps": 3, "resume": "latest"}))
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the scaler went on from its checkpointed state (its growth tracker counts every step)
    assert load_checkpoint(resumed.checkpoint)["extra"]["scaler"] == state["extra"]["scaler"]
