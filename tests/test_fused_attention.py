"""Fused attention (emotionclip.models.fused) against today's path, nn.MultiheadAttention,
on CPU in fp32: the ViT frame encoder in every subject mode (SAAM's per-sample eq. 4
masks included), the text tower (causal), the temporal encoder, gradients, the
attention maps of the visualisation, and the mask conventions of the module itself."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emotionclip.models import TINY_MODEL_NAME, EmotionCLIP, attention_maps
from emotionclip.models import fused
from emotionclip.models.fused import FusedMultiheadAttention, use_fused_attention

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return open_clip.create_model(TINY_MODEL_NAME)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 3, 3, 224, 224, generator=g)  # 2 clips x 3 frames
    masks = torch.zeros(2, 3, 224, 224)
    masks[0, 0, 40:150, 70:130] = 1  # a box over patches partially
    masks[0, 1] = 1  # the whole frame
    masks[1, 0, 100:224, 0:60] = 1  # frame (1, 1) and (0, 2), (1, 2): nobody
    tokens = open_clip.get_tokenizer(TINY_MODEL_NAME)(["a happy face", "why would you do that to me"])
    return frames, masks, tokens


def _model(clip, mode: str, **kw) -> EmotionCLIP:
    torch.manual_seed(0)
    return EmotionCLIP.from_openclip(copy.deepcopy(clip), subject_mode=mode, temporal_dropout=0.0, **kw)


def _run(model: EmotionCLIP, inputs, fused_on: bool):
    """Video and text features, the loss gradient of every parameter."""
    use_fused_attention(model, fused_on)
    model.zero_grad(set_to_none=True)
    frames, masks, tokens = inputs
    v, t, scale = model(frames, masks, tokens)
    (scale * (v @ t.T)).logsumexp(1).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return v.detach(), t.detach(), grads


def test_every_attention_layer_is_fused(clip):
    model = _model(clip, "sap")
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert mhas and all(type(m) is FusedMultiheadAttention for m in mhas)
    text_blocks = model.clip.transformer.resblocks
    assert all(b.attn.causal_mask for b in text_blocks)  # OpenCLIP's text mask is causal
    assert not any(getattr(b.attn, "causal_mask", False) for b in model.clip.visual.transformer.resblocks)
    keys = set(model.state_dict())
    use_fused_attention(model, False)
    assert all(type(m) is nn.MultiheadAttention for m in mhas) and set(model.state_dict()) == keys


@pytest.mark.parametrize("mode,kw", [("sap", {}), ("saam", {}), ("saam", {"saam_layers": 1}), ("vanilla", {})],
                         ids=["sap", "saam", "saam-first-layer", "vanilla"])
def test_fused_equals_today_forward_and_backward(clip, inputs, mode, kw):
    model = _model(clip, mode, **kw).train()  # training mode: no inference fast path on either side
    v0, t0, g0 = _run(model, inputs, fused_on=False)
    v1, t1, g1 = _run(model, inputs, fused_on=True)
    assert torch.allclose(v1, v0, **TOL) and torch.allclose(t1, t0, **TOL)
    assert g1.keys() == g0.keys() and len(g0) > 20
    # float rounding only: relative to each gradient's scale (token embeddings reach ~40)
    bad = [n for n in g0 if not torch.allclose(g1[n], g0[n], rtol=1e-4, atol=1e-6 * max(1.0, float(g0[n].abs().max())))]
    assert not bad, bad


def test_saam_masks_reach_the_kernel_per_sample(clip, inputs, monkeypatch):
    """Through the fused path SAAM's mask arrives per frame and head, [N, heads, L, L],
    and changes the result: dropping it gives other features."""
    model = _model(clip, "saam").eval()
    frames, masks, _ = inputs
    x, m = frames.flatten(0, 1), masks.flatten(0, 1)
    calls: list[tuple] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), kw.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(fused.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        with_mask = model.encode_frames(x, m)
    heads = model.clip.visual.transformer.resblocks[0].attn.num_heads
    n_layers = len(model.clip.visual.transformer.resblocks)
    L = 7 * 7 + 2  # CLS, 49 patches, HMN
    assert calls == [((6, heads, L, L), False)] * n_layers
    calls.clear()
    with torch.no_grad():
        model.encode_text(inputs[2])
    assert calls and all(c == (None, True) for c in calls)  # the causal mask as is_causal: flash-eligible
    model.config.saam_layers = 0
    with torch.no_grad():
        unmasked = model.encode_frames(x, m)
    assert not torch.allclose(with_mask, unmasked, atol=1e-4)


def test_attention_maps_are_unchanged(clip, inputs):
    model = _model(clip, "saam")
    frames, masks, _ = inputs
    x, m = frames[0], masks[0]
    use_fused_attention(model, False)
    before = attention_maps(model, x, m, layers=(1, 2))
    use_fused_attention(model, True)
    after = attention_maps(model, x, m, layers=(1, 2))
    for a, b in [(before.hmn, after.hmn), (before.cls, after.cls), (before.hmn_self, after.hmn_self)]:
        assert torch.allclose(a, b, **TOL)
    # eq. 4: the HMN token attends to no patch outside the subject (frame 2 has nobody)
    assert torch.all(after.weights[1][2, :, -1, 1:-1] == 0)


def test_temporal_encoder_equals_today(clip):
    model = _model(clip, "sap").train()
    x = torch.randn(4, 8, model.embed_dim, requires_grad=True)
    use_fused_attention(model.temporal, False)
    ref = model.temporal(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    use_fused_attention(model.temporal, True)
    out = model.temporal(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(out, ref, **TOL) and torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["none", "float2d", "float3d", "bool3d", "causal"])
def test_module_mask_conventions(kind):
    """FusedMultiheadAttention = nn.MultiheadAttention for each kind of attn_mask
    (bool = blocked there, allowed in scaled_dot_product_attention)."""
    torch.manual_seed(0)
    n, L, d, h = 3, 6, 16, 4
    ref = nn.MultiheadAttention(d, h, batch_first=True)
    ours = copy.deepcopy(ref)
    ours.__class__ = FusedMultiheadAttention
    x = torch.randn(n, L, d)
    causal = torch.full((L, L), float("-inf")).triu(1)
    mask = {"none": None, "float2d": torch.randn(L, L), "float3d": torch.randn(n * h, L, L),
            "bool3d": torch.rand(n * h, L, L) > 0.7, "causal": causal}[kind]
    if kind == "bool3d":
        mask[:, :, 0] = False  # every query may attend somewhere
    if kind == "causal":
        ours.causal_mask = True
    want = ref(x, x, x, need_weights=False, attn_mask=mask)[0]
    got, weights = ours(x, x, x, need_weights=False, attn_mask=mask)
    assert weights is None and torch.allclose(got, want, **TOL)
    # weights asked for: the parent's path, the same weights
    w_ref = ref(x, x, x, need_weights=True, attn_mask=mask)[1]
    w = ours(x, x, x, need_weights=True, attn_mask=mask)[1]
    assert torch.allclose(w, w_ref, **TOL)
