"""`emotionclip viz attention` and emotionclip.viz: the HMN / CLS attention grid
(paper Fig. 5, appendix Figs. 6-8) on the tiny ViT (2 layers, 224 px, patch 32,
7x7 grid), real models and a real frame store, no mocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from emotionclip.cli import app
from emotionclip.models import (TINY_MODEL_NAME, EmotionCLIP, save_checkpoint, state_dict_to_official,
                                subject_patch_coverage)
from emotionclip.models.attention import attention_maps
from emotionclip.models.transforms import normalize_frames
from emotionclip.viz import clip_inputs, grid_size_px, plot_attention_grid
from emotionclip.viz import attention as viz
from training_data import write_manifest

PATCH = 32
T = 3  # frames per clip in these tests (rows of the grid)


@pytest.fixture(scope="module")
def corpus(box_corpus, tmp_path_factory):
    # a white box on black; every clip's subject box is that box (training_data.BOX_PX)
    root, cat, df = box_corpus
    df = df[df["video_id"] == "vid0"].head(2).reset_index(drop=True)
    manifest = write_manifest(df, tmp_path_factory.mktemp("viz") / "manifests" / "clips-00000.parquet")
    return root, cat, manifest, df


def _model(mode: str, seed: int = 0) -> EmotionCLIP:
    torch.manual_seed(seed)
    return EmotionCLIP.from_openclip(TINY_MODEL_NAME, subject_mode=mode).eval()


def _maps(model, frames_u8, masks, layers=(1, 2)):
    cfg = model.preprocess_cfg
    return attention_maps(model, normalize_frames(frames_u8, cfg.mean, cfg.std), masks, layers)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _assert_rows_sum_to_one(maps):
    for layer, w in maps.weights.items():
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]), atol=1e-5, rtol=0, msg=f"layer {layer}")


def _assert_hmn_only_on_subject(maps, masks):
    """SAAM (eq. 4): the HMN token attends to the subject's patches and to itself only."""
    cov = subject_patch_coverage(masks.float(), PATCH)  # [T, 49]
    hmn = maps.hmn.flatten(2)  # [T, K, 49]
    inside = (cov > 0).unsqueeze(1)
    assert inside.any(), "the test needs a subject"
    assert torch.all(hmn[~inside.expand_as(hmn)] == 0)  # exactly 0 off the subject
    total = (hmn * inside).sum(-1) + maps.hmn_self
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


# -- the library ---------------------------------------------------------------

def test_clip_inputs_are_the_eval_frames_and_masks(corpus):
    root, cat, manifest, df = corpus
    model = _model("saam")
    clip_id = df["clip_id"].iloc[0]
    frames, masks = clip_inputs(model, manifest, clip_id, cat, num_frames=T)
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (T, 3, 224, 224)
    assert masks.dtype == torch.uint8 and tuple(masks.shape) == (T, 224, 224)
    # the mask lies on the white box of the video (same resize and centre crop)
    inside = frames.float().mean(1)[masks.bool()].mean()
    outside = frames.float().mean(1)[~masks.bool()].mean()
    assert inside > 200 and outside < 30
    # a DataFrame and a catalog's callable give the same
    f2, m2 = clip_inputs(model, df, clip_id, lambda v: cat.artifact("frames", v), num_frames=T)
    assert torch.equal(frames, f2) and torch.equal(masks, m2)
    with pytest.raises(ValueError, match="no-such-clip"):
        clip_inputs(model, manifest, "no-such-clip", cat)


@pytest.mark.parametrize("mode", ["saam", "sap"])
def test_grid_png_and_attention_on_a_clip(corpus, tmp_path, mode):
    root, cat, manifest, df = corpus
    model = _model(mode)
    frames, masks = clip_inputs(model, manifest, df["clip_id"].iloc[1], cat, num_frames=T)
    maps = _maps(model, frames, masks)
    assert maps.layers == (1, 2)
    assert tuple(maps.hmn.shape) == tuple(maps.cls.shape) == (T, 2, 7, 7)
    _assert_rows_sum_to_one(maps)
    if mode == "saam":
        _assert_hmn_only_on_subject(maps, masks)
    else:  # SAP masks nothing: the HMN token's attention reaches every patch
        assert torch.all(maps.hmn > 0)

    out = tmp_path / "grid" / f"{mode}.png"
    assert plot_attention_grid(frames, masks, maps, out, title=f"clip ({mode})") == out
    # 1 + 2 * 2 panels across, T rows, the column-title and figure-title bands
    expected = (viz.PANEL_PX * 5, viz.PANEL_PX * T + viz.HEADER_PX + viz.TITLE_PX)
    assert grid_size_px(T, 2, title=True) == expected
    assert _png_size(out) == expected
    assert [p.name for p in out.parent.iterdir()] == [f"{mode}.png"]  # no temporary left behind
    px = np.asarray(Image.open(out).convert("RGB"))
    assert px.std() > 10  # something was drawn
    plot_attention_grid(frames, masks, maps, tmp_path / "untitled.png")
    assert _png_size(tmp_path / "untitled.png") == (viz.PANEL_PX * 5, viz.PANEL_PX * T + viz.HEADER_PX)


def test_saam_hmn_attention_follows_the_box():
    model = _model("saam", seed=1)
    torch.manual_seed(2)
    frames = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    top_left = torch.zeros(2, 224, 224, dtype=torch.uint8)
    top_left[:, 0:64, 0:64] = 1  # patches (0..1, 0..1)
    top_left[1, 70:75, 0:10] = 1  # frame 1 also touches patch (2, 0) a little: membership is coverage > 0
    bottom_right = torch.zeros_like(top_left)
    bottom_right[:, 160:224, 160:224] = 1  # patches (5..6, 5..6)
    a = _maps(model, frames, top_left)
    b = _maps(model, frames, bottom_right)
    for maps, masks in ((a, top_left), (b, bottom_right)):
        _assert_rows_sum_to_one(maps)
        _assert_hmn_only_on_subject(maps, masks)
    assert torch.all(a.hmn[:, :, 2, 0][1] > 0) and torch.all(a.hmn[:, :, 2, 0][0] == 0)

    def mass(maps, rows, cols):
        return maps.hmn[:, :, rows, cols].sum((-1, -2))  # [T, K]

    tl, br = (slice(0, 2), slice(0, 2)), (slice(5, 7), slice(5, 7))
    # top-left box: the HMN mass is top-left and none bottom-right; moving the box moves it
    assert torch.all(mass(a, *tl) > 0) and torch.all(mass(a, *br) == 0)
    assert torch.all(mass(b, *br) > 0) and torch.all(mass(b, *tl) == 0)
    torch.testing.assert_close(mass(b, *br) + b.hmn_self, torch.ones(2, 2), atol=1e-5, rtol=0)
    # the CLS token is not masked by eq. 4: it looks everywhere in both
    assert torch.all(a.cls > 0) and torch.all(b.cls > 0)


def test_plot_checks_shapes(tmp_path):
    model = _model("sap")
    frames = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
    masks = torch.zeros(2, 224, 224, dtype=torch.uint8)  # no subject: nothing outlined, no error
    maps = _maps(model, frames, masks, layers=(2,))
    out = plot_attention_grid(frames, masks, maps, tmp_path / "a.png")
    assert _png_size(out) == grid_size_px(2, 1)
    full = torch.ones_like(masks)  # all subject: a border
    plot_attention_grid(frames, full, _maps(model, frames, full, layers=(2,)), tmp_path / "b.png")
    with pytest.raises(ValueError, match="masks"):
        plot_attention_grid(frames, masks[:1], maps, tmp_path / "c.png")
    with pytest.raises(ValueError, match="frames"):
        plot_attention_grid(frames[:1], masks[:1], maps, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


# -- the command -----------------------------------------------------------------

def _run(*args):
    return CliRunner().invoke(app, ["viz", "attention", *map(str, args)])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for mode in ("saam", "vanilla"):
        paths[mode] = d / f"{mode}.pt"
        save_checkpoint(paths[mode], _model(mode))
    # the authors' layout (backbone./visual_head. keys, SAP) on the tiny architecture
    paths["official"] = d / "official.pt"
    torch.save({"model": state_dict_to_official(_model("sap").state_dict())}, paths["official"])
    return paths


def test_cli_attention_end_to_end(corpus, checkpoints, tmp_path):
    root, cat, manifest, df = corpus
    clip_id = df["clip_id"].iloc[0]
    common = ["--manifests", manifest, "--clip-id", clip_id, "-p", "tiny", "--data-root", root,
              "--num-frames", T]
    out = tmp_path / "figs" / "saam.png"
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "1-2", "--out", out, *common)
    assert r.exit_code == 0, r.output
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line == {"out": str(out), "clip_id": clip_id, "layers": [1, 2], "subject_mode": "saam"}
    assert _png_size(out) == grid_size_px(T, 2, title=True)

    out = tmp_path / "figs" / "official.png"
    r = _run("--official-checkpoint", checkpoints["official"], "--clip-model", TINY_MODEL_NAME,
             "--layers", "2", "--out", out, *common)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["subject_mode"] == "sap"
    assert _png_size(out) == grid_size_px(T, 1, title=True)


def test_cli_attention_errors(corpus, checkpoints, tmp_path):
    root, cat, manifest, df = corpus
    out = tmp_path / "x.png"
    common = ["--manifests", manifest, "-p", "tiny", "--data-root", root, "--num-frames", T, "--out", out]
    clip = ["--clip-id", df["clip_id"].iloc[0]]

    r = _run("--checkpoint", checkpoints["saam"], "--official-checkpoint", checkpoints["official"], *clip, *common)
    assert r.exit_code == 2 and "exactly one of --checkpoint, --official-checkpoint" in r.output
    r = _run(*clip, *common)
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = _run("--checkpoint", checkpoints["saam"], "--clip-id", "vid0:99", "--layers", "1-2", *common)
    assert r.exit_code == 2 and "error:" in r.output and "vid0:99" in r.output
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "1-4", *clip, *common)  # a 2-layer ViT
    assert r.exit_code == 2 and "error: --layers" in r.output and "outside 1..2" in r.output
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "2-1", *clip, *common)
    assert r.exit_code == 2 and "backwards" in r.output
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "one", *clip, *common)
    assert r.exit_code == 2 and "not a layer number" in r.output
    r = _run("--checkpoint", checkpoints["saam"], *clip, *common)  # default: the paper's 1-4, capped at 2
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["layers"] == [1, 2]
    out.unlink()
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "0", *clip, *common)
    assert r.exit_code == 2 and "outside 1..2" in r.output
    r = _run("--checkpoint", checkpoints["vanilla"], "--layers", "1", *clip, *common)
    assert r.exit_code == 2 and "vanilla" in r.output
    r = _run("--checkpoint", tmp_path / "missing.pt", "--layers", "1", *clip, *common)
    assert r.exit_code == 2 and "error:" in r.output
    # the catalog points at a data root without the frame stores: the clip cannot be read
    empty = ["--manifests", manifest, "-p", "tiny", "--data-root", tmp_path / "empty", "--num-frames", T, "--out", out]
    r = _run("--checkpoint", checkpoints["saam"], "--layers", "1", *clip, *empty)
    assert r.exit_code == 1 and "error:" in r.output
    assert not out.exists()
