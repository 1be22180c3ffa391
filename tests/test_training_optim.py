"""Training presets, parameter groups and learning-rate schedules against the paper's
appendix B.2 and the authors' code."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from emotionclip.models import EmotionCLIP, TINY_MODEL_NAME
from emotionclip.training.config import LOGIT_SCALE_MAX, make_config
from emotionclip.training.optim import build_optimizer, build_scheduler, clamp_logit_scale, param_groups


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EmotionCLIP.from_openclip(TINY_MODEL_NAME)


def _groups(model, preset):
    return {g["name"]: g for g in param_groups(model, make_config(preset))}


def test_paper_preset_values():
    c = make_config("paper")
    assert (c.betas, c.eps, c.weight_decay) == ((0.98, 0.9), 1e-10, 0.1)
    # appendix B.2: 1e-6 for every parameter of the temporal encoder
    assert (c.lr_gain_bias, c.lr_encoder, c.lr_temporal, c.lr_temporal_gain_bias) == (5e-5, 1e-8, 1e-6, 1e-6)
    assert (c.warmup_steps, c.min_lr, c.schedule_unit, c.epochs, c.batch_size) == (2500, 1e-10, "step", 25, 128)
    # eq. 6: KL(s_i || s_j); beta from the authors' code (the paper gives none)
    assert (c.num_frames, c.image_size, c.beta, c.kl_direction) == (8, 224, 10.0, "paper")
    assert c.normalization == "clip" and c.ablation is None
    assert c.logit_scale_max == pytest.approx(math.log(100))


def test_official_code_preset_values():
    c = make_config("official-code")
    assert (c.betas, c.eps, c.weight_decay) == ((0.98, 0.9), 1e-6, 0.1)
    assert (c.lr_gain_bias, c.lr_encoder, c.lr_temporal, c.lr_temporal_gain_bias) == (5e-5, 1e-8, 1e-8, 5e-5)
    assert (c.kl_direction, c.normalization) == ("code", "imagenet")
    assert (c.warmup_steps, c.schedule_unit, c.precision, c.epochs, c.batch_size) == (10000, "epoch", "fp16", 25, 128)


def test_tiny_profile_trains_from_scratch_and_the_presets_stay():
    from emotionclip.training.config import TINY_LR

    tiny = make_config("paper", profile="tiny")
    assert (tiny.warmup_steps, tiny.log_every_steps) == (0, 1)
    assert (tiny.lr_encoder, tiny.lr_temporal) == (TINY_LR, TINY_LR)
    assert (tiny.lr_gain_bias, tiny.lr_temporal_gain_bias) == (5e-5, 1e-6)  # the paper's
    assert make_config("official-code", profile="tiny").warmup_steps == 0  # the profile applies after the preset
    assert make_config("paper", profile="tiny", warmup_steps=7).warmup_steps == 7  # explicit values win
    for preset in ("paper", "official-code"):  # the paper profile (and none) keep the preset's numbers
        assert make_config(preset, profile="paper").model_dump(exclude={"profile"}) == \
            make_config(preset).model_dump(exclude={"profile"})


def test_unknown_preset_and_bad_override():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("nope")
    with pytest.raises(ValidationError):
        make_config("paper", no_such_field=1)


@pytest.mark.parametrize("preset,temporal_lr,temporal_gb_lr", [("paper", 1e-6, 1e-6), ("official-code", 1e-8, 5e-5)])
def test_parameter_groups(model, preset, temporal_lr, temporal_gb_lr):
    groups = _groups(model, preset)
    expect = {
        "frame_gain_bias": (5e-5, 0.0), "frame_weight": (1e-8, 0.1),
        "text_gain_bias": (5e-5, 0.0), "text_weight": (1e-8, 0.1),
        "temporal_gain_bias": (temporal_gb_lr, 0.0), "temporal_weight": (temporal_lr, 0.1),
        "logit_scale": (1e-8, 0.0),
    }
    assert {k: (g["lr"], g["weight_decay"]) for k, g in groups.items()} == expect
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    by_id = {id(p): name for name, g in groups.items() for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["clip.visual.conv1.weight"])] == "frame_weight"
    assert by_id[id(named["clip.visual.ln_post.bias"])] == "frame_gain_bias"
    assert by_id[id(named["clip.visual.class_embedding"])] == "frame_gain_bias"
    assert by_id[id(named["clip.token_embedding.weight"])] == "text_weight"
    assert by_id[id(named["clip.ln_final.weight"])] == "text_gain_bias"
    assert by_id[id(named["temporal.fusion_layer.layers.0.linear1.weight"])] == "temporal_weight"
    assert by_id[id(named["temporal.fusion_layer.layers.0.norm1.weight"])] == "temporal_gain_bias"
    assert by_id[id(named["clip.logit_scale"])] == "logit_scale"


def test_adamw_settings(model):
    opt = build_optimizer(model, make_config("official-code"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.98, 0.9) and opt.defaults["eps"] == 1e-6


def test_paper_schedule_per_step(model):
    c = make_config("paper", epochs=2)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, steps_per_epoch=5000)  # 10,000 steps in all
    base = sched.base_lrs
    assert sched.lr_at(0) == [0.0] * len(base)
    assert sched.lr_at(1250) == pytest.approx([b / 2 for b in base])
    assert sched.lr_at(2500) == pytest.approx(sched.base_lrs)
    mid = 2500 + 7500 / 2
    assert sched.lr_at(int(mid)) == pytest.approx([(b + 1e-10) / 2 for b in sched.base_lrs])
    assert sched.lr_at(10000) == pytest.approx([1e-10] * len(base))
    assert sched.lr_at(5001) != sched.lr_at(5002)  # changes every step


def test_official_schedule_per_epoch(model):
    c = make_config("official-code", epochs=4)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, steps_per_epoch=20000)
    gb = sched.base_lrs[0]
    assert sched.lr_at(0)[0] == pytest.approx(gb * 1e-5)
    # warm-up ends (10,000 iterations, inside epoch 0) at the epoch-0 cosine value = base
    assert sched.lr_at(10000)[0] == pytest.approx(gb)
    assert sched.lr_at(15000) == sched.lr_at(19999)  # constant within an epoch after warm-up
    e1 = 1e-10 + (gb - 1e-10) * 0.5 * (1 + math.cos(math.pi * 1 / 4))
    assert sched.lr_at(20000)[0] == pytest.approx(e1)


def test_scheduler_state_roundtrip(model):
    c = make_config("paper", epochs=1, warmup_steps=10)
    opt = build_optimizer(model, c)
    s1 = build_scheduler(opt, c, steps_per_epoch=100)
    for _ in range(7):
        s1.step()
    opt2 = build_optimizer(model, c)
    s2 = build_scheduler(opt2, c, steps_per_epoch=100)
    s2.load_state_dict(s1.state_dict())
    assert s2.get_last_lr() == s1.get_last_lr()


def test_clamp_logit_scale(model):
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)
    clamp_logit_scale(model.named_parameters(), LOGIT_SCALE_MAX)
    assert float(model.clip.logit_scale.detach()) == pytest.approx(math.log(100))
    with torch.no_grad():
        model.clip.logit_scale.fill_(-1.0)
    clamp_logit_scale(model.named_parameters(), LOGIT_SCALE_MAX)
    assert float(model.clip.logit_scale.detach()) == 0.0


def test_saam_hmn_token_is_a_frame_gain_like_the_cls_token():
    torch.manual_seed(0)
    saam = EmotionCLIP.from_openclip(TINY_MODEL_NAME, subject_mode="saam")
    groups = {g["name"]: g for g in param_groups(saam, make_config("paper"))}
    assert any(p is saam.hmn_token for p in groups["frame_gain_bias"]["params"])
