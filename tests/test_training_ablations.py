"""The Table 1 / Table 3 ablations as configuration: every named row builds and trains
one step on the tiny profile with the trainable/frozen parts its row says; frozen
encoders stay bitwise unchanged; random initialisation replaces exactly one tower."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from emotionclip.models import TINY_MODEL_NAME, create_openclip
from emotionclip.training import ABLATIONS, get_ablation, make_config, trainable_parts
from emotionclip.training.loop import build_model, load_catalog_for, train
from emotionclip.training.optim import param_groups
from emotionclip.training.parts import parameter_part
from training_data import write_manifest


@pytest.fixture(scope="module")
def corpus(clip_corpus, tmp_path_factory):
    root, _, df = clip_corpus
    return root, write_manifest(df.head(2), tmp_path_factory.mktemp("ablate") / "clips-00000.parquet")


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    """A stand-in for the OpenCLIP weights: a tiny model's state dict in a file."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "open_clip_model.bin"
    torch.save(create_openclip(TINY_MODEL_NAME).state_dict(), path)
    return path


def _config(corpus, out, ablation=None, **kw):
    root, manifest = corpus
    values = dict(manifests=str(manifest), out_dir=str(out), profile="tiny", data_root=str(root), batch_size=2,
                  num_workers=0, epochs=1, num_frames=2, max_steps=1, log_every_steps=1, warmup_steps=0,
                  lr_gain_bias=1e-2, lr_encoder=1e-2, lr_temporal=1e-2, lr_temporal_gain_bias=1e-2)
    values.update(kw)
    return make_config("paper", ablation=ablation, **values)


def test_the_rows_of_table1_and_table3():
    assert set(ABLATIONS) == {"vanilla", "saam", "sap", "sap-snce", "text-random", "all-random", "text-frozen",
                              "text-frame-frozen", "temporal-mean"}
    # Table 1: without SNCE the loss is CLIP's (beta 0); SAP & SNCE is the full model
    for name, mode in (("vanilla", "vanilla"), ("saam", "saam"), ("sap", "sap")):
        assert ABLATIONS[name].overrides == {"subject_mode": mode, "beta": 0.0}
    assert ABLATIONS["sap-snce"].overrides == {"subject_mode": "sap", "beta": 10.0}
    assert ABLATIONS["sap-snce"].bold == {"mAP": 22.51, "AUC": 69.30, "R2": 0.133}
    assert ABLATIONS["text-frame-frozen"].bold == {"mAP": 18.43, "AUC": 65.08}
    with pytest.raises(ValueError, match="unknown ablation"):
        get_ablation("nope")
    with pytest.raises(ValueError, match="unknown ablation"):
        make_config("paper", ablation="nope")


def test_ablation_then_overrides():
    c = make_config("paper", ablation="text-frozen", beta=3.0)
    assert c.ablation == "text-frozen" and c.freeze_text and not c.freeze_frame and c.beta == 3.0
    c = make_config("official-code", ablation="sap")
    assert c.beta == 0.0 and c.kl_direction == "code"


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_builds_trains_one_step_with_its_parts(corpus, tmp_path, name):
    cfg = _config(corpus, tmp_path, name)
    torch.manual_seed(0)
    model = build_model(cfg, load_catalog_for(cfg), torch.device("cpu"))
    ab = ABLATIONS[name]
    assert model.subject_mode == cfg.subject_mode and model.config.temporal == cfg.temporal
    assert trainable_parts(model) == set(ab.trainable) - ({"temporal"} if cfg.temporal == "mean" else set())
    grouped = {id(p) for g in param_groups(model, cfg) for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(cfg, model=model)
    assert result.step == 1 and result.last_loss is not None and torch.isfinite(torch.tensor(result.last_loss))
    for n, p in model.named_parameters():
        frozen = parameter_part(n) not in ab.trainable
        assert (id(p) in grouped) == (not frozen), n  # frozen: in no optimizer group
        assert p.requires_grad == (not frozen), n
        if frozen:
            assert p.grad is None and torch.equal(p.detach(), before[n]), n  # bitwise unchanged
    changed = {parameter_part(n) for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= set(ab.trainable) and changed  # something trained


def test_frozen_encoders_stay_bitwise_unchanged_over_steps(corpus, tmp_path):
    cfg = _config(corpus, tmp_path, "text-frame-frozen", max_steps=3, epochs=3)
    torch.manual_seed(0)
    model = build_model(cfg, load_catalog_for(cfg), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(cfg, model=model)
    for n, p in model.named_parameters():
        same = torch.equal(p.detach(), before[n])
        if parameter_part(n) in ("frame", "text"):
            assert same, n
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()
               if parameter_part(n) == "temporal")


@pytest.mark.parametrize("init_text,init_frame", [("random", "pretrained"), ("random", "random"),
                                                  ("pretrained", "random")])
def test_random_initialisation_replaces_exactly_that_tower(corpus, tmp_path, pretrained_file, init_text, init_frame):
    cfg = _config(corpus, tmp_path, clip_model=TINY_MODEL_NAME, clip_pretrained=str(pretrained_file),
                  init_text=init_text, init_frame=init_frame, subject_mode="saam")
    weights = torch.load(pretrained_file, weights_only=True)
    model = build_model(cfg, load_catalog_for(cfg), torch.device("cpu"))
    for name, t in model.clip.state_dict().items():
        part = parameter_part(f"clip.{name}")
        if part not in ("frame", "text") or t.ndim < 2:  # norms start at 1/0 in any init
            continue
        wanted = init_frame if part == "frame" else init_text
        assert torch.equal(t, weights[name]) == (wanted == "pretrained"), name
    # SAAM's HMN token follows its tower: a copy of that tower's CLS input embedding
    v = model.clip.visual
    assert torch.equal(model.hmn_token.detach(), (v.class_embedding + v.positional_embedding[0]).detach())


def test_normalisation_is_recorded_in_the_run_config_and_checkpoint(corpus, tmp_path):
    from emotionclip.models import load_checkpoint
    from emotionclip.models.transforms import IMAGENET_MEAN
    from emotionclip.training import checkpoint as ckpt

    cfg = _config(corpus, tmp_path, normalization="imagenet")
    train(cfg)
    raw = load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert raw["extra"]["train_config"]["normalization"] == "imagenet"
    assert tuple(raw["config"]["preprocess"]["mean"]) == IMAGENET_MEAN


def test_cli_ablation_and_list(corpus, tmp_path):
    from emotionclip.cli import app

    root, manifest = corpus
    runner = CliRunner()
    listed = runner.invoke(app, ["train", "--list-ablations"])
    assert listed.exit_code == 0, listed.output
    names = [json.loads(line)["name"] for line in listed.output.strip().splitlines()]
    assert names == list(ABLATIONS)
    res = runner.invoke(app, ["train", "--manifests", str(manifest), "--out", str(tmp_path / "run"),
                              "--profile", "tiny", "--data-root", str(root), "--ablation", "text-frozen",
                              "--max-steps", "1", "--set", "batch_size=2", "--set", "num_workers=0",
                              "--set", "num_frames=2", "--set", "epochs=1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text()) if (tmp_path / "run" / "train_config.json").exists() else None
    from emotionclip.models import load_checkpoint
    from emotionclip.training import checkpoint as ckpt

    saved = load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))["extra"]["train_config"]
    assert saved["ablation"] == "text-frozen" and saved["freeze_text"] is True
    assert cfg is None or cfg["ablation"] == "text-frozen"
    bad = runner.invoke(app, ["train", "--manifests", str(manifest), "--out", str(tmp_path / "x"),
                              "--ablation", "nope"])
    assert bad.exit_code == 2 and "unknown ablation" in bad.output
