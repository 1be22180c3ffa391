"""Our checkpoints (weights_only round trip) and the authors' checkpoint format."""

from __future__ import annotations

import pytest
import torch

from emotionclip.models import (
    TINY_MODEL_NAME,
    EmotionCLIP,
    load_checkpoint,
    load_model,
    load_official_checkpoint,
    official_to_state_dict,
    save_checkpoint,
    state_dict_to_official,
)
from emotionclip.models.transforms import IMAGENET_MEAN, IMAGENET_STD


def _inputs(b=2, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, t, 3, 224, 224, generator=g)
    masks = torch.zeros(b, t, 224, 224)
    masks[0, :, 30:200, 50:160] = 1
    return video, masks


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EmotionCLIP.from_openclip(TINY_MODEL_NAME, subject_mode="sap").eval()


def test_save_load_round_trip_with_training_state(model, tmp_path):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    video, masks = _inputs()
    tokens = model.tokenize(["what a day", "leave me alone"])
    # one step so the optimizer has state
    v, t, scale = model(video, masks, tokens)
    (v @ t.T * scale).sum().backward()
    opt.step()
    sched.step()
    path = tmp_path / "ckpt" / "step_1.pt"
    save_checkpoint(path, model, optimizer=opt, scheduler=sched, step=1, extra={"epoch": 0})
    assert not list(path.parent.glob(".*tmp*"))  # atomic: nothing half-written left

    raw = torch.load(path, weights_only=True)  # only plain types inside
    assert raw["step"] == 1 and raw["extra"] == {"epoch": 0}
    assert raw["config"]["clip_model"] == TINY_MODEL_NAME and raw["config"]["subject_mode"] == "sap"

    loaded = load_model(path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        a = model(video, masks, tokens)
        b = loaded(video, masks, tokens)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    ckpt = load_checkpoint(path)
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-4)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_load_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(ValueError, match="not an EmotionCLIP checkpoint"):
        load_model(p)


def test_official_key_mapping_round_trip(model):
    ours = model.state_dict()
    official = state_dict_to_official(ours)
    assert "backbone.visual.conv1.weight" in official
    assert "visual_head.frame_position_embedding.weight" in official
    assert official["visual_head.frame_position_embedding.weight"].shape == (8, 64)
    for i in range(6):
        for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
                     "linear2.weight", "norm1.weight", "norm2.weight"):
            assert f"visual_head.fusion_layer.layers.{i}.{name}" in official
    assert "visual_head.fusion_layer.norm.weight" in official
    assert "logit_scale" in official and "visual_head.position_ids" in official
    back = official_to_state_dict(official)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_load_official_checkpoint_computes_what_the_source_model_computes(model, tmp_path):
    # a file laid out like the authors' release: torch.save({"model": ..., ...})
    path = tmp_path / "emotionclip_official.pt"
    torch.save({"model": state_dict_to_official(model.state_dict()), "epoch": 24}, path)
    loaded = load_official_checkpoint(path, clip_model=TINY_MODEL_NAME)
    assert loaded.config.subject_mode == "sap" and loaded.config.temporal == "transformer"
    assert loaded.config.max_frames == 8 and loaded.config.temporal_layers == 6
    # their training used ImageNet statistics: part of the preprocessing config
    assert loaded.preprocess_cfg.mean == IMAGENET_MEAN and loaded.preprocess_cfg.std == IMAGENET_STD
    video, masks = _inputs()
    tokens = loaded.tokenize(["you did it!", "no way"])
    with torch.no_grad():
        a = model(video, masks, tokens)
        b = loaded(video, masks, tokens)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


class _Opaque:  # needs arbitrary unpickling
    pass


def test_official_checkpoint_needing_pickle_requires_opt_in(model, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": state_dict_to_official(model.state_dict()), "args": _Opaque()}, path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_official_checkpoint(path, clip_model=TINY_MODEL_NAME)
    loaded = load_official_checkpoint(path, clip_model=TINY_MODEL_NAME, allow_pickle=True)
    assert torch.equal(loaded.clip.visual.proj, model.clip.visual.proj)


def test_model_module_imports_no_io_module():
    """One direction only: checkpoint.py and zero_shot.py import model.py, never the reverse."""
    import ast
    import inspect

    import emotionclip.models.model as model_module

    tree = ast.parse(inspect.getsource(model_module))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"emotionclip.models.checkpoint", "emotionclip.models.zero_shot"}
    assert not any(hasattr(EmotionCLIP, name) for name in ("save", "load", "load_official_checkpoint", "zero_shot"))
