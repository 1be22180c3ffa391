"""Subject-aware frame encoding on an OpenCLIP VisionTransformer (DESIGN.md section 5).

Three subject modes, all without extra parameters:
- `vanilla`: the OpenCLIP image tower as is (equals `encode_image`).
- `sap` (subject-aware prompting, the paper's choice): one extra token
  `z_hmn = sum_i o_i * e_i` (o_i = coverage of patch i by the subject mask,
  e_i = positional embedding of patch i, CLS excluded, no normalisation),
  appended after the positional embeddings are added. Empty mask -> zero token.
- `saam` (subject-aware attention masking, paper eq. 2-4): the same HMN token
  plus a masking matrix M added to the attention logits of every layer; the HMN
  token only attends to the subject (see `saam_attention_mask`), and the class
  token takes the subject information through its attention to the HMN token.
  Unverified: the paper's equations could not be read here and the authors'
  code implements SAP only (docs/paper-provenance.md).

The frame feature is always `ln_post(CLS output) @ proj`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SubjectMode = Literal["sap", "saam", "vanilla"]
SUBJECT_MODES: tuple[str, ...] = ("sap", "saam", "vanilla")


def subject_patch_coverage(mask: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch's pixels inside the subject mask.

    mask: [N, H, W] (bool or float in [0, 1]). Returns [N, num_patches] in [0, 1],
    patches in row-major order (the order of the ViT's patch tokens). Like the
    patch convolution, a remainder of pixels at the right/bottom edge is ignored.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be [N, H, W], got shape {tuple(mask.shape)}")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    m = mask.unsqueeze(1).float()
    cov = F.avg_pool2d(m, kernel_size=(ph, pw), stride=(ph, pw))  # [N, 1, gh, gw]
    return cov.flatten(1)


def subject_token(coverage: torch.Tensor, positional_embedding: torch.Tensor) -> torch.Tensor:
    """z_hmn = sum_i o_i * e_i over the patch positions (row 0 of the embedding is CLS).

    coverage: [N, P]; positional_embedding: [1 + P, width]. Returns [N, width]."""
    patch_pos = positional_embedding[1:]
    if patch_pos.shape[0] != coverage.shape[1]:
        raise ValueError(
            f"mask covers {coverage.shape[1]} patches but the ViT has {patch_pos.shape[0]}: "
            "frames and masks must have the model's image size"
        )
    return coverage.to(patch_pos.dtype) @ patch_pos


def saam_attention_mask(coverage: torch.Tensor, num_heads: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The SAAM masking matrix M (additive, added to the attention logits), one per frame.

    Token order: [CLS, patch_1..patch_P, HMN] (L = P + 2). Our reading of the
    paper's eq. 2-4 and its implementation notes:
      - row HMN (the subject token as query): M[HMN, j] = log(o_j) for patch j, so the
        HMN token attends only to patches that the subject covers, in proportion to the
        coverage (a fully covered patch gets 0, an uncovered one -inf);
        M[HMN, CLS] = -inf; M[HMN, HMN] = 0 (a frame without a subject then attends
        to itself only: no row is all -inf, so no NaN).
      - every other row is 0 (unmasked): the CLS token sees the whole frame as context,
        and the attention weight A it gives to the HMN token is the share of its
        update that comes from the subject.
    Returns [N * num_heads, L, L] in the layout nn.MultiheadAttention expects for a
    per-sample 3-D mask (sample-major, heads inner).
    """
    n, p = coverage.shape
    L = p + 2
    m = torch.zeros(n, L, L, dtype=torch.float32, device=coverage.device)
    m[:, -1, 0] = float("-inf")
    m[:, -1, 1 : p + 1] = torch.log(coverage.float())  # log(0) = -inf
    m[:, -1, -1] = 0.0
    return m.to(dtype).repeat_interleave(num_heads, dim=0)


def check_visual(visual: nn.Module, subject_mode: str) -> None:
    """The subject modes need a CLS-pooled OpenCLIP VisionTransformer."""
    if subject_mode not in SUBJECT_MODES:
        raise ValueError(f"subject_mode must be one of {SUBJECT_MODES}, got {subject_mode!r}")
    for attr in ("conv1", "positional_embedding", "_embeds", "_pool", "transformer", "proj"):
        if not hasattr(visual, attr):
            raise ValueError(
                f"EmotionCLIP needs an OpenCLIP VisionTransformer image tower (missing {attr!r}); "
                f"got {type(visual).__name__}"
            )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("EmotionCLIP's frame feature is the CLS output: the ViT must use pool_type='tok'")
    if subject_mode == "saam" and not isinstance(getattr(visual.transformer.resblocks[0], "attn", None),
                                                 nn.MultiheadAttention):
        raise ValueError("saam needs the standard OpenCLIP attention block (nn.MultiheadAttention)")


def _patch_size(visual: nn.Module) -> tuple[int, int]:
    ps = visual.patch_size
    return (ps, ps) if isinstance(ps, int) else tuple(ps)


def encode_frames(
    visual: nn.Module,
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    subject_mode: SubjectMode = "sap",
) -> torch.Tensor:
    """Frame features [N, D] from frames [N, 3, H, W] and subject masks [N, H, W].

    `masks=None` means no subject in any frame (a zero SAP token), except in
    `vanilla` mode where masks are ignored.
    """
    if subject_mode == "vanilla":
        return visual(frames)
    if masks is None:
        masks = frames.new_zeros(frames.shape[0], frames.shape[-2], frames.shape[-1])
    if masks.shape[0] != frames.shape[0] or masks.shape[-2:] != frames.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match frames {tuple(frames.shape)}")

    coverage = subject_patch_coverage(masks, _patch_size(visual))  # [N, P]
    x = visual._embeds(frames)  # CLS + patches, positional embeddings added, ln_pre applied
    z_hmn = subject_token(coverage, visual.positional_embedding).to(x.dtype)
    # ln_pre normalises each token on its own, so normalising the appended token here
    # equals appending it before ln_pre, as the paper does.
    x = torch.cat([x, visual.ln_pre(z_hmn).unsqueeze(1)], dim=1)

    attn_mask = None
    if subject_mode == "saam":
        if x.shape[1] != coverage.shape[1] + 2:
            raise ValueError("saam does not support patch dropout during training")
        heads = visual.transformer.resblocks[0].attn.num_heads
        attn_mask = saam_attention_mask(coverage, heads, dtype=x.dtype)
    x = visual.transformer(x, attn_mask=attn_mask)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
