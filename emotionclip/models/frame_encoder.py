"""Subject-aware frame encoding on an OpenCLIP VisionTransformer (paper section 3.3,
appendix B.1; docs/design.md section 5).

Token order inside the ViT is OpenCLIP's with the subject (HMN) token appended:
`[CLS, patch_1..patch_m, HMN]` (the paper writes `[z_1..z_m, z_cls, z_hmn]`; the order
of tokens does not change attention, only which row/column is which). Three modes:

- `vanilla`: the OpenCLIP image tower as is (equals `encode_image`); no HMN token.
- `sap` (subject-aware prompting, the paper's choice, section 3.3 and appendix B.1):
  `z_hmn = sum_i o_i * e_i` (o_i = coverage of patch i by the subject mask, e_i =
  positional embedding of patch i, CLS excluded, no normalisation), appended after
  the positional embeddings are added; no attention mask. Parameter-free; a frame
  without a subject gives a zero token.
- `saam` (subject-aware attention masking, section 3.3 eq. 2-4): `z_hmn` is a
  learnable token (section 3.2: "z_cls, z_hmn are two additional learnable tokens")
  and the masking matrix M of eq. 4 is added to the attention logits of the first
  `saam_layers` layers ("up to a certain layer", section 4.2.1). Appendix B.1 reduces
  eq. 2-3 to the ordinary attention layer with its mask set to M (V of layer l-1 for
  the subject term, A = each token's attention to the HMN token), so that is what
  runs here. The learnable token is `EmotionCLIP.hmn_token` (see `init_hmn_token`).

The frame feature is always `ln_post(CLS output) @ proj`.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

SubjectMode = Literal["sap", "saam", "vanilla"]
SUBJECT_MODES: tuple[str, ...] = ("sap", "saam", "vanilla")


def subject_patch_coverage(mask: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch's pixels inside the subject mask (o_i of appendix B.1).

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
    """SAP's z_hmn = sum_{i in P} o_i * e_i (appendix B.1) over the patch positions
    (row 0 of the embedding is CLS). coverage: [N, m]; positional_embedding: [1 + m, width].
    Returns [N, width]."""
    patch_pos = positional_embedding[1:]
    if patch_pos.shape[0] != coverage.shape[1]:
        raise ValueError(
            f"mask covers {coverage.shape[1]} patches but the ViT has {patch_pos.shape[0]}: "
            "frames and masks must have the model's image size"
        )
    return coverage.to(patch_pos.dtype) @ patch_pos


def saam_attention_mask(coverage: torch.Tensor, num_heads: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The masking matrix M of eq. 4, additive (0 = allowed, -inf = blocked), one per frame.

    coverage: [N, m] patch coverage o_i. Token order [CLS, patch_1..patch_m, HMN]
    (L = m + 2); rows are queries, columns are keys. P = {i : o_i > 0} (binary
    membership: appendix B.1 puts every patch with any overlap in P). Eq. 4:
      - M1 = 0: CLS and the patches attend to each other freely;
      - M2_i = M3_i = -inf for i not in P: a patch outside the subject neither attends
        to the HMN token nor is attended by it; patches in P do both;
      - M2 at CLS = 0: CLS attends to the HMN token;
      - M3 at CLS = -inf: the HMN token does not attend to CLS ("to ensure z_hmn only
        encodes the subject");
      - M4 = 0: the HMN token attends to itself, so its row is never all -inf (a frame
        without a subject gives no NaN).
    Returns [N * num_heads, L, L] in the layout nn.MultiheadAttention expects for a
    per-sample 3-D mask (sample-major, heads inner).
    """
    if coverage.dim() != 2:
        raise ValueError(f"coverage must be [N, m], got shape {tuple(coverage.shape)}")
    n, m = coverage.shape
    L = m + 2
    blocked = torch.zeros(n, L, L, dtype=torch.bool, device=coverage.device)
    outside = coverage <= 0  # [N, m]: patches not in P
    blocked[:, 1 : m + 1, -1] = outside  # patch i -> HMN (M2)
    blocked[:, -1, 1 : m + 1] = outside  # HMN -> patch i (M3)
    blocked[:, -1, 0] = True  # HMN -> CLS (M3 at CLS)
    mask = torch.zeros(n, L, L, dtype=dtype, device=coverage.device)
    mask.masked_fill_(blocked, float("-inf"))
    return mask.repeat_interleave(num_heads, dim=0)


def init_hmn_token(visual: nn.Module) -> torch.Tensor:
    """Initial value of SAAM's learnable HMN token (the paper does not say; our choice).

    A copy of the CLS token's input embedding (class embedding + CLS positional
    embedding): at initialisation the HMN token is a second CLS whose attention eq. 4
    restricts to the subject, the two-stream picture SAAM implements (section 3.3).
    It gets no positional embedding of its own: it always sits in the same slot, so a
    learned vector already carries whatever a position would add. ln_pre is applied
    to it like to every other token. Recorded in docs/paper-provenance.md.
    """
    with torch.no_grad():
        return (visual.class_embedding + visual.positional_embedding[0]).detach().clone().float()


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
    if subject_mode != "vanilla" and not all(
        isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in visual.transformer.resblocks
    ):
        raise ValueError("EmotionCLIP needs the standard OpenCLIP attention block (nn.MultiheadAttention)")
    if getattr(visual.transformer, "batch_first", True) is not True:
        raise ValueError("EmotionCLIP needs a batch-first OpenCLIP transformer")


def num_layers(visual: nn.Module) -> int:
    return len(visual.transformer.resblocks)


def _patch_size(visual: nn.Module) -> tuple[int, int]:
    ps = visual.patch_size
    return (ps, ps) if isinstance(ps, int) else tuple(ps)


def attention_probs(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention weights [N, heads, L, L] that `block` (an OpenCLIP
    ResidualAttentionBlock) applies to its input x [N, L, D] under `attn_mask`
    ([N*heads, L, L] additive, or None): softmax(Q K^T / sqrt(d) + M) per head, from
    the block's own projections (what the fused kernel computes internally without
    materialising it: the attention-map figures need the weights)."""
    attn: nn.MultiheadAttention = block.attn
    h = block.ln_1(x)
    n, L, d = h.shape
    heads = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h, w[:d], b[:d] if b is not None else None)
    k = F.linear(h, w[d : 2 * d], b[d : 2 * d] if b is not None else None)
    q = q.view(n, L, heads, d // heads).transpose(1, 2)
    k = k.view(n, L, heads, d // heads).transpose(1, 2)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d // heads)
    if attn_mask is not None:
        logits = logits + attn_mask.float().view(n, heads, L, L)
    return logits.softmax(dim=-1)


def run_transformer(
    visual: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None,
    masked_layers: int,
    record: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The ViT's blocks on tokens x [N, L, D]: `attn_mask` in blocks 0..masked_layers-1,
    no mask after (SAAM "up to a certain layer"). `record`: 0-based block indices whose
    attention weights [N, heads, L, L] are returned too."""
    tr = visual.transformer
    recorded: dict[int, torch.Tensor] = {}
    for i, block in enumerate(tr.resblocks):
        mask_i = attn_mask if i < masked_layers else None
        if i in record:
            recorded[i] = attention_probs(block, x, mask_i)
        if getattr(tr, "grad_checkpointing", False) and torch.is_grad_enabled():
            x = checkpoint(block, x, None, None, mask_i, use_reentrant=False)
        else:
            x = block(x, attn_mask=mask_i)
    return x, recorded


def encode_frames(
    visual: nn.Module,
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    subject_mode: SubjectMode = "sap",
    *,
    hmn_token: torch.Tensor | None = None,
    saam_layers: int | None = None,
    attention_layers: Sequence[int] = (),
) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Frame features [N, D] from frames [N, 3, H, W] and subject masks [N, H, W].

    `masks=None` means no subject in any frame (in `vanilla` mode masks are ignored).
    `saam` needs `hmn_token` [width] (the learnable token) and masks the first
    `saam_layers` blocks (None = all). With `attention_layers` (0-based block
    indices) returns `(features, {layer: attention weights [N, heads, L, L]})`.
    """
    if subject_mode == "vanilla" and not attention_layers:
        return visual(frames)
    if subject_mode == "saam" and hmn_token is None:
        raise ValueError("saam needs the learnable HMN token (EmotionCLIP.hmn_token)")
    if masks is None:
        masks = frames.new_zeros(frames.shape[0], frames.shape[-2], frames.shape[-1])
    if masks.shape[0] != frames.shape[0] or masks.shape[-2:] != frames.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match frames {tuple(frames.shape)}")

    coverage = subject_patch_coverage(masks, _patch_size(visual))  # [N, m]
    x = visual._embeds(frames)  # CLS + patches, positional embeddings added, ln_pre applied
    attn_mask = None
    masked = 0
    if subject_mode != "vanilla":
        if x.shape[1] != coverage.shape[1] + 1:
            raise ValueError("subject-aware modes do not support patch dropout")
        if subject_mode == "sap":
            z_hmn = subject_token(coverage, visual.positional_embedding).to(x.dtype)
        else:
            z_hmn = hmn_token.to(x.dtype).expand(x.shape[0], -1)
        # ln_pre normalises each token on its own, so normalising the appended token here
        # equals appending it before ln_pre, as the paper does.
        x = torch.cat([x, visual.ln_pre(z_hmn).unsqueeze(1)], dim=1)
        if subject_mode == "saam":
            masked = num_layers(visual) if saam_layers is None else int(saam_layers)
            heads = visual.transformer.resblocks[0].attn.num_heads
            # nn.MultiheadAttention's per-sample layout; the fused attention reads it as [N, heads, L, L]
            attn_mask = saam_attention_mask(coverage, heads, dtype=x.dtype)
    x, recorded = run_transformer(visual, x, attn_mask, masked, attention_layers)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    if attention_layers:
        return pooled, recorded
    return pooled
