"""Fused attention: `F.scaled_dot_product_attention` (flash / memory-efficient
kernels on CUDA) straight from an `nn.MultiheadAttention`'s packed weights, in
the ViT frame encoder, the text tower and the temporal encoder.

What was on the path before: OpenCLIP's blocks and PyTorch's
TransformerEncoderLayer call `nn.MultiheadAttention` with `need_weights=False`,
which already ends in scaled_dot_product_attention, but (1) the text tower's
causal mask arrives as a float [L, L] matrix, which rules out the flash kernel
(here: `is_causal=True`), and (2) the module's generic glue (mask
canonicalisation, checks, the in-projection split into three copies) runs in
every layer. SAAM's eq. 4 mask (section 3.3) keeps nn.MultiheadAttention's
per-sample layout, additive [N*heads, L, L] (0 allowed, -inf blocked), read
here as [N, heads, L, L]; with a mask the memory-efficient kernel runs, without
one (SAP, the paper's choice; vanilla) flash can.

`FusedMultiheadAttention` is `nn.MultiheadAttention` with that forward for
batch-first self-attention without weights asked for; anything else (weights
for a visualisation, cross-attention, key padding) goes to the parent's
forward. It has the same parameters and state-dict keys: `use_fused_attention`
switches a model's attention modules in place (and back), checkpoints do not
change. Mask conventions: nn.MultiheadAttention's boolean masks mark what is
*blocked*, scaled_dot_product_attention's what is *allowed*; float masks are
additive in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor | None = None, *,
                   is_causal: bool = False) -> torch.Tensor:
    """Multi-head self-attention of `attn` on x [N, L, D] (batch first) through
    scaled_dot_product_attention. `allowed`: None, a boolean mask (True = may
    attend) or an additive float mask, broadcastable to [N, heads, L, L]."""
    n, length, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)  # [N, heads, L, hd] each
    if allowed is not None and allowed.dtype != torch.bool and allowed.dtype != q.dtype:
        allowed = allowed.to(q.dtype)  # an additive mask in the compute dtype (autocast)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=is_causal,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(n, length, d)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def mha_mask_to_sdpa(attn_mask: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """An nn.MultiheadAttention attn_mask ([L, L] or [N*heads, L, L]; bool = blocked,
    float = additive) as scaled_dot_product_attention takes it."""
    m = attn_mask
    if m.dim() == 3:
        m = m.view(n, heads, m.shape[-2], m.shape[-1])
    return ~m if m.dtype == torch.bool else m


class FusedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose weight-free batch-first self-attention runs
    `self_attention`. `causal_mask = True` (set on the text tower's layers, whose
    only 2-D mask is OpenCLIP's causal one) turns a 2-D attn_mask into is_causal."""

    causal_mask: bool = False

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # type: ignore[override]
        fusable = (not need_weights and key_padding_mask is None and self.batch_first and query.dim() == 3
                   and query is key and key is value and self._qkv_same_embed_dim and self.bias_k is None
                   and not self.add_zero_attn)
        if not fusable:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        n, length = query.shape[:2]
        if attn_mask is not None and attn_mask.dim() == 2 and self.causal_mask and attn_mask.shape == (length, length):
            attn_mask, is_causal = None, True
        elif attn_mask is not None:
            attn_mask, is_causal = mha_mask_to_sdpa(attn_mask, n, self.num_heads), False
        return self_attention(self, query, attn_mask, is_causal=is_causal), None


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """True for an additive [L, L] mask that blocks exactly the future (OpenCLIP's)."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    future = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[future]).all()) and bool((mask[~future] == 0).all())


def use_fused_attention(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every nn.MultiheadAttention of `module` to `FusedMultiheadAttention`
    (or back, `enabled=False`), in place: parameters and buffers untouched. The
    layers of a text tower with a causal mask get `causal_mask`."""
    for m in module.modules():
        if enabled and type(m) is nn.MultiheadAttention:
            m.__class__ = FusedMultiheadAttention
        elif not enabled and type(m) is FusedMultiheadAttention:
            m.__dict__.pop("causal_mask", None)
            m.__class__ = nn.MultiheadAttention
    if enabled:
        text = getattr(module, "text", module)  # CustomTextCLIP keeps its text tower in .text
        transformer = getattr(text, "transformer", None)
        if is_causal_mask(getattr(text, "attn_mask", None)) and hasattr(transformer, "resblocks"):
            for block in transformer.resblocks:
                if isinstance(getattr(block, "attn", None), FusedMultiheadAttention):
                    block.attn.causal_mask = True
    return module


def fused_enabled(block: nn.Module) -> bool:
    """Whether an OpenCLIP block's attention is the fused one."""
    return isinstance(getattr(block, "attn", None), FusedMultiheadAttention)
