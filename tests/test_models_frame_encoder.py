"""Frame encoder: patch coverage, SAP token, SAAM masks, vanilla == OpenCLIP (tiny OpenCLIP config)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from emotionclip.models import (
    TINY_MODEL_NAME,
    EmotionCLIP,
    saam_attention_mask,
    subject_patch_coverage,
    subject_token,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return open_clip.create_model(TINY_MODEL_NAME).eval()


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 224, 224, generator=g)
    m = torch.zeros(3, 224, 224)
    m[0, 40:150, 70:130] = 1  # a person box spanning patches partially
    m[1, :, :] = 1  # the whole frame
    # frame 2: nobody
    return x, m


def test_coverage_by_hand():
    # 8x8 mask, 4x4 patches -> 2x2 grid; box rows 2..5 (inclusive), cols 1..2
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 1:3] = 1
    cov = subject_patch_coverage(mask, 4)
    # top-left patch (rows 0-3, cols 0-3): rows 2,3 x cols 1,2 -> 4 of 16 pixels
    # top-right (rows 0-3, cols 4-7): 0; bottom-left (rows 4-7, cols 0-3): rows 4,5 x cols 1,2 -> 4/16
    assert cov.shape == (1, 4)
    assert torch.allclose(cov, torch.tensor([[4 / 16, 0.0, 4 / 16, 0.0]]))


def test_coverage_row_major_and_partial_edges():
    mask = torch.zeros(2, 6, 9)
    mask[0, 0:3, 3:6] = 1  # exactly patch (row 0, col 1)
    mask[1, 4, 7] = True  # one pixel of patch (row 1, col 2)
    cov = subject_patch_coverage(mask.bool(), 3)
    assert cov.shape == (2, 6)
    assert cov[0].tolist() == [0, 1, 0, 0, 0, 0]
    assert torch.allclose(cov[1], torch.tensor([0, 0, 0, 0, 0, 1 / 9]))


def test_subject_token_is_coverage_weighted_sum_of_patch_positions():
    pos = torch.arange(15, dtype=torch.float32).reshape(5, 3)  # CLS + 4 patches, width 3
    cov = torch.tensor([[0.25, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    z = subject_token(cov, pos)
    expected = 0.25 * pos[1] + 0.5 * pos[3] + 1.0 * pos[4]
    assert torch.equal(z[0], expected)
    assert torch.equal(z[1], torch.zeros(3))  # no person -> zero token


def test_vanilla_equals_openclip_encode_image(clip, frames):
    x, m = frames
    model = EmotionCLIP.from_openclip(clip, subject_mode="vanilla").eval()
    with torch.no_grad():
        ours = model.encode_frames(x, m)
        ref = clip.encode_image(x)
    assert torch.equal(ours, ref)


def _reference_sap(clip, x, mask, block_subject_token=False):
    """The paper's SAP written out with plain ops (as the authors' VisualTransformer does)."""
    v = clip.visual
    t = v.conv1(x).flatten(2).permute(0, 2, 1)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    t = torch.cat([cls, t], dim=1) + v.positional_embedding
    o = F.avg_pool2d(mask.unsqueeze(1).float(), 32).flatten(1)  # [N, 49]
    z = (o.unsqueeze(-1) * v.positional_embedding[1:]).sum(1, keepdim=True)
    t = v.ln_pre(torch.cat([t, z], dim=1))
    attn_mask = None
    if block_subject_token:
        L = t.shape[1]
        attn_mask = torch.zeros(L, L)
        attn_mask[:-1, -1] = float("-inf")  # nobody attends to the subject token
    t = v.transformer(t, attn_mask=attn_mask)
    return v.ln_post(t[:, 0]) @ v.proj


def test_sap_matches_paper_formula(clip, frames):
    x, m = frames
    model = EmotionCLIP.from_openclip(clip, subject_mode="sap").eval()
    with torch.no_grad():
        ours = model.encode_frames(x, m)
        ref = _reference_sap(clip, x, m)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[0], ours[2])  # the mask matters


def test_sap_empty_mask_differs_from_vanilla_only_through_zero_token(clip, frames):
    x, _ = frames
    empty = torch.zeros(3, 224, 224)
    sap = EmotionCLIP.from_openclip(clip, subject_mode="sap").eval()
    with torch.no_grad():
        ours = sap.encode_frames(x, empty)
        ours_none = sap.encode_frames(x, None)
        vanilla = clip.encode_image(x)
        # the same zero token, but nothing may attend to it: back to vanilla
        blocked = _reference_sap(clip, x, empty, block_subject_token=True)
    assert torch.equal(ours, ours_none)
    assert not torch.allclose(ours, vanilla, atol=1e-4)  # the zero token is still a token
    assert torch.allclose(blocked, vanilla, atol=1e-5, rtol=1e-5)


def test_no_extra_parameters(clip):
    n = {mode: sum(p.numel() for p in EmotionCLIP.from_openclip(clip, subject_mode=mode).parameters())
         for mode in ("sap", "saam", "vanilla")}
    assert n["sap"] == n["saam"] == n["vanilla"]


def test_saam_mask_element_by_element():
    # 2x2 grid: coverage of 4 patches; tokens [CLS, p1, p2, p3, p4, HMN]
    cov = torch.tensor([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]])
    M = saam_attention_mask(cov, num_heads=2)
    assert M.shape == (4, 6, 6)
    inf = float("-inf")
    expected0 = torch.zeros(6, 6)
    expected0[5] = torch.tensor([inf, 0.0, math.log(0.5), inf, math.log(0.25), 0.0])
    expected1 = torch.zeros(6, 6)
    expected1[5] = torch.tensor([inf, inf, inf, inf, inf, 0.0])
    # sample-major, heads inner (nn.MultiheadAttention's 3-D mask layout)
    for k, exp in enumerate([expected0, expected0, expected1, expected1]):
        for i in range(6):
            for j in range(6):
                assert M[k, i, j].item() == pytest.approx(exp[i, j].item()), (k, i, j)


def test_saam_hmn_token_sees_only_the_subject(clip, frames):
    """Changing pixels outside the subject changes SAAM's HMN output only through the
    other tokens; with a single layer there is no such path, so the HMN token's own
    first-layer output depends only on the subject's patches."""
    x, m = frames
    v = clip.visual
    cov = subject_patch_coverage(m[:1], 32)
    x2 = x[:1].clone()
    outside = cov[0].view(7, 7) == 0
    x2[:, :, :32, :32] += 5.0 * outside[0, 0]  # patch (0,0) is outside the subject
    assert outside[0, 0]
    block = v.transformer.resblocks[0]
    outs = []
    with torch.no_grad():
        for xi in (x[:1], x2):
            t = v._embeds(xi)
            z = subject_token(cov, v.positional_embedding)
            t = torch.cat([t, v.ln_pre(z).unsqueeze(1)], dim=1)
            M = saam_attention_mask(cov, block.attn.num_heads)
            outs.append(block(t, attn_mask=M))
    assert torch.allclose(outs[0][:, -1], outs[1][:, -1], atol=1e-6)  # HMN: unchanged
    assert not torch.allclose(outs[0][:, 0], outs[1][:, 0])  # CLS sees the whole frame


def test_saam_runs_and_is_finite(clip, frames):
    x, m = frames
    model = EmotionCLIP.from_openclip(clip, subject_mode="saam").eval()
    sap = EmotionCLIP.from_openclip(clip, subject_mode="sap").eval()
    with torch.no_grad():
        out = model.encode_frames(x, m)
        out_sap = sap.encode_frames(x, m)
    assert out.shape == (3, 64) and torch.isfinite(out).all()  # frame 2 has no person: still finite
    assert not torch.allclose(out, out_sap)


@pytest.mark.parametrize("mode", ["sap", "saam", "vanilla"])
def test_shapes_dtypes_fp32_and_bf16_autocast(clip, frames, mode):
    torch.manual_seed(0)
    model = EmotionCLIP.from_openclip(clip, subject_mode=mode, max_frames=4).eval()
    x, m = frames
    video = x[:2].unsqueeze(1).expand(2, 4, 3, 224, 224).contiguous()
    masks = m[:2].unsqueeze(1).expand(2, 4, 224, 224).contiguous()
    tokens = model.tokenize(["I can't believe it!", "Get out."])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    with torch.no_grad():
        v32, t32, scale = model(video, masks, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v16, t16, _ = model(video, masks, tokens)
    assert v32.shape == (2, 64) and t32.shape == (2, 64)
    assert v32.dtype == torch.float32 and t32.dtype == torch.float32
    assert torch.allclose(v32.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial temperature
    assert torch.isfinite(v16).all() and torch.isfinite(t16).all()
    assert F.cosine_similarity(v32, v16.float()).min() > 0.98
    assert F.cosine_similarity(t32, t16.float()).min() > 0.98
