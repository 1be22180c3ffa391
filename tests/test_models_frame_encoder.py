"""Frame encoder: patch coverage, SAP token, SAAM masks, vanilla == OpenCLIP (tiny OpenCLIP config)."""

from __future__ import annotations

import copy

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


def test_only_saam_has_a_parameter_of_its_own(clip):
    models = {mode: EmotionCLIP.from_openclip(clip, subject_mode=mode) for mode in ("sap", "saam", "vanilla")}
    n = {mode: sum(p.numel() for p in m.parameters()) for mode, m in models.items()}
    width = clip.visual.class_embedding.shape[0]
    assert n["sap"] == n["vanilla"]  # SAP is parameter-free (section 3.3)
    assert n["saam"] == n["sap"] + width  # the learnable HMN token (section 3.2)
    assert models["sap"].hmn_token is None and models["vanilla"].hmn_token is None
    assert "hmn_token" in dict(models["saam"].named_parameters())
    # initialised as the CLS token's input embedding (our documented choice)
    v = clip.visual
    assert torch.equal(models["saam"].hmn_token.detach(), (v.class_embedding + v.positional_embedding[0]).detach())


INF = float("-inf")


def _eq4_reference(coverage: torch.Tensor) -> torch.Tensor:
    """Eq. 4 written out entry by entry: tokens [CLS, p_1..p_m, HMN], rows = queries."""
    m = coverage.shape[0]
    L = m + 2
    hmn = L - 1
    in_p = [False] + [bool(c > 0) for c in coverage] + [False]
    out = torch.zeros(L, L)
    for q in range(L):
        for k in range(L):
            if q == hmn and k == 0:
                out[q, k] = INF  # HMN does not attend to CLS
            elif q == hmn and 1 <= k <= m and not in_p[k]:
                out[q, k] = INF  # HMN attends only to patches in P
            elif k == hmn and 1 <= q <= m and not in_p[q]:
                out[q, k] = INF  # a patch outside P does not attend to HMN
    return out


def test_saam_mask_element_by_element():
    # 2x2 grid, tokens [CLS, p1, p2, p3, p4, HMN]; partly covered patches are in P
    cov = torch.tensor([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]])
    M = saam_attention_mask(cov, num_heads=2)
    assert M.shape == (4, 6, 6) and M.dtype == torch.float32
    e = torch.zeros(6, 6)
    e[1:5, 5] = torch.tensor([0.0, 0.0, INF, 0.0])  # patch -> HMN: only p3 (not in P) blocked
    e[5] = torch.tensor([INF, 0.0, 0.0, INF, 0.0, 0.0])  # HMN -> CLS blocked, -> p3 blocked, -> itself allowed
    no_subject = torch.zeros(6, 6)
    no_subject[1:5, 5] = INF  # no patch attends to HMN
    no_subject[5, :5] = INF  # HMN attends to itself only
    # CLS -> HMN allowed in both (row 0 all zero)
    for k, exp in enumerate([e, e, no_subject, no_subject]):  # sample-major, heads inner
        for i in range(6):
            for j in range(6):
                assert M[k, i, j].item() == exp[i, j].item(), (k, i, j)
    # the same through the written-out eq. 4, and only the values 0 / -inf ever occur
    for frame in range(2):
        assert torch.equal(M[2 * frame], _eq4_reference(cov[frame]))
    assert set(M.unique().tolist()) == {0.0, INF}


def test_saam_mask_on_a_7x7_grid_from_a_box(clip):
    mask = torch.zeros(1, 224, 224)
    mask[0, 40:150, 70:130] = 1  # covers some patches partly
    cov = subject_patch_coverage(mask, 32)[0]
    assert ((cov > 0) & (cov < 1)).any()
    M = saam_attention_mask(cov[None], num_heads=3)
    assert M.shape == (3, 51, 51)
    for h in range(3):
        assert torch.equal(M[h], _eq4_reference(cov))


def test_mask_in_multihead_attention_gives_zero_weight_exactly_where_eq4_blocks():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    cov = torch.tensor([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]])
    x = torch.randn(2, 6, 16)
    M = saam_attention_mask(cov, 2)
    _, w = mha(x, x, x, attn_mask=M, need_weights=True, average_attn_weights=False)  # [2, heads, 6, 6]
    blocked = torch.isinf(M).view(2, 2, 6, 6)
    assert torch.isfinite(w).all()
    assert (w[blocked] == 0).all()
    assert (w[~blocked] > 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 6))


def _attention_masks_per_layer(model, x, m):
    """The attn_mask each ViT block's nn.MultiheadAttention receives (forward pre-hooks)."""
    seen: dict[int, torch.Tensor | None] = {}
    hooks = []
    for i, block in enumerate(model.clip.visual.transformer.resblocks):
        def hook(module, args, kwargs, i=i):
            seen[i] = kwargs.get("attn_mask")
        hooks.append(block.attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model.encode_frames(x, m)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("k", [0, 1, 2, None])
def test_saam_layers_masks_exactly_the_first_k_layers(clip, frames, k):
    x, m = frames
    model = EmotionCLIP.from_openclip(clip, subject_mode="saam", saam_layers=k).eval()
    depth = len(clip.visual.transformer.resblocks)
    seen = _attention_masks_per_layer(model, x, m)
    assert sorted(seen) == list(range(depth))
    k_eff = depth if k is None else k
    heads = clip.visual.transformer.resblocks[0].attn.num_heads
    expected = saam_attention_mask(subject_patch_coverage(m, 32), heads)
    for i in range(depth):
        if i < k_eff:
            assert seen[i] is not None and torch.equal(seen[i].float(), expected), i
        else:
            assert seen[i] is None, i


def test_saam_layers_out_of_range(clip):
    with pytest.raises(ValueError, match="saam_layers"):
        EmotionCLIP.from_openclip(clip, subject_mode="saam", saam_layers=3)


def test_sap_and_vanilla_pass_no_mask(clip, frames):
    x, m = frames
    for mode in ("sap", "vanilla"):
        seen = _attention_masks_per_layer(EmotionCLIP.from_openclip(clip, subject_mode=mode).eval(), x, m)
        assert all(v is None for v in seen.values()), mode


def test_saam_hmn_token_sees_only_the_subject(clip, frames):
    """With one masked layer the HMN token's output depends only on the subject's
    patches and itself: changing a patch outside the subject leaves it unchanged."""
    x, m = frames
    model = EmotionCLIP.from_openclip(clip, subject_mode="saam").eval()
    cov = subject_patch_coverage(m[:1], 32)
    outside = cov[0].view(7, 7) == 0
    assert outside[0, 0]
    x2 = x[:1].clone()
    x2[:, :, :32, :32] += 5.0  # patch (0, 0) is outside the subject
    _, w1 = model.encode_frames(x[:1], m[:1], return_attention=[0])
    _, w2 = model.encode_frames(x2, m[:1], return_attention=[0])
    assert torch.allclose(w1[0][:, :, -1], w2[0][:, :, -1], atol=1e-6)  # HMN row: unchanged
    assert not torch.allclose(w1[0][:, :, 0], w2[0][:, :, 0])  # CLS sees the whole frame
    assert (w1[0][:, :, -1, 1:50][:, :, cov[0] == 0] == 0).all()


@pytest.mark.parametrize("autocast", [False, True])
def test_saam_no_subject_no_nan_forward_and_backward(clip, autocast):
    torch.manual_seed(0)
    model = EmotionCLIP.from_openclip(copy.deepcopy(clip), subject_mode="saam", max_frames=2).train()
    video = torch.randn(2, 2, 3, 224, 224)
    masks = torch.zeros(2, 2, 224, 224)  # nobody in any frame
    tokens = model.tokenize(["Nobody here.", "Still nobody."])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        v, t, scale = model(video, masks, tokens)
        loss = (v @ t.T).sum() * scale
    loss.backward()
    assert torch.isfinite(v).all() and torch.isfinite(loss)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_saam_training_step_finite_and_hmn_token_learns(clip, frames):
    from emotionclip.models import SentimentGuidedLoss

    torch.manual_seed(0)
    x, m = frames
    model = EmotionCLIP.from_openclip(copy.deepcopy(clip), subject_mode="saam", max_frames=2).train()
    video = x[:2].unsqueeze(1).repeat(1, 2, 1, 1, 1)
    masks = m[:2].unsqueeze(1).repeat(1, 2, 1, 1)
    tokens = model.tokenize(["I can't believe it!", "Get out."])
    v, t, scale = model(video, masks, tokens)
    loss = SentimentGuidedLoss(beta=10.0)(v, t, torch.randn(2, 7), scale)
    before = model.hmn_token.detach().clone()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert model.hmn_token.grad is not None and model.hmn_token.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.hmn_token.detach(), before)


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
