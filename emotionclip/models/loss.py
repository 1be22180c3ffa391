"""Sentiment-guided contrastive loss (SNCE, paper section 3.4 eq. 5-7; docs/design.md section 5).

Eq. 5: logits_ij = logit_scale * v_i . t_j - w_ij; eq. 6: w_ij = beta / KL(s_i || s_j)
between the sentiment distributions (softmax of the 7 emotion logits) of samples i
and j, w_ii = 0. The authors' code computes KL(s_j || s_i) for row i, column j
(`kl_direction="code"`, the official-code preset); the default is the paper's.
A pair of samples with identical sentiment (KL = 0) gets w = inf: that negative is
removed. Eq. 7: both directions (video->text, text->video) with the same w_ij for
row i, column j (not its transpose), the mean of the two cross-entropies.
With beta = 0 it is exactly CLIP's InfoNCE loss.

DDP: the weights must come from the global batch. Gather features and
sentiment logits with `emotionclip.models.gather_features` (a no-op without an
initialised process group) and pass the gathered tensors here; the local slice
keeps its autograd graph, so each rank gets gradients for its own samples:

    v, t, s = gather_features(video_feats, text_feats, sentiment_logits)
    loss = criterion(v, t, s, model.logit_scale.exp())
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

KLDirection = Literal["code", "paper"]

# The paper gives no value for beta (Fig. 6 sweeps it); the authors' code: 10.
DEFAULT_BETA = 10.0


def pairwise_kl(sentiment_logits: torch.Tensor, direction: KLDirection = "paper") -> torch.Tensor:
    """[N, N] KL divergences between the softmaxed rows of `sentiment_logits` [N, C].

    direction="code" (authors' code): entry (i, j) = KL(s_j || s_i).
    direction="paper" (eq. 6): entry (i, j) = KL(s_i || s_j).
    Computed elementwise (not as a matrix product) so identical rows give exactly 0.
    """
    if direction not in ("code", "paper"):
        raise ValueError(f"kl_direction must be 'code' or 'paper', got {direction!r}")
    logp = F.log_softmax(sentiment_logits.float(), dim=-1)
    p = logp.exp()
    # kl_jrow[i, j] = sum_k p_jk (log p_jk - log p_ik) = KL(s_j || s_i)
    kl = (p.unsqueeze(0) * (logp.unsqueeze(0) - logp.unsqueeze(1))).sum(-1)
    kl = kl.clamp_min(0.0)  # rounding can give -1e-9 for near-identical rows
    return kl if direction == "code" else kl.T


def sentiment_weights(
    sentiment_logits: torch.Tensor, beta: float = DEFAULT_BETA, kl_direction: KLDirection = "paper"
) -> torch.Tensor:
    """w [N, N]: beta / KL off the diagonal (inf where KL = 0), 0 on the diagonal; no gradient."""
    n = sentiment_logits.shape[0]
    with torch.no_grad():
        if beta == 0:
            return sentiment_logits.new_zeros(n, n, dtype=torch.float32)
        kl = pairwise_kl(sentiment_logits, kl_direction)
        w = torch.where(kl > 0, beta / kl.clamp_min(torch.finfo(kl.dtype).tiny), torch.full_like(kl, float("inf")))
        w.fill_diagonal_(0.0)
    return w


class SentimentGuidedLoss(nn.Module):
    """SNCE loss. forward(video_features [N, D], text_features [N, D] (both L2-normalised),
    sentiment_logits [N, 7] (raw emotion-model logits), logit_scale (exp of the learned
    log-scale)) -> scalar. Pass globally gathered tensors under DDP (see module doc)."""

    def __init__(self, beta: float = DEFAULT_BETA, kl_direction: KLDirection = "paper"):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if kl_direction not in ("code", "paper"):
            raise ValueError(f"kl_direction must be 'code' or 'paper', got {kl_direction!r}")
        self.beta = float(beta)
        self.kl_direction = kl_direction

    def forward(
        self,
        video_features: torch.Tensor,
        text_features: torch.Tensor,
        sentiment_logits: torch.Tensor,
        logit_scale: torch.Tensor | float,
    ) -> torch.Tensor:
        n = video_features.shape[0]
        if text_features.shape[0] != n or sentiment_logits.shape[0] != n:
            raise ValueError(
                f"batch sizes differ: video {n}, text {text_features.shape[0]}, sentiment {sentiment_logits.shape[0]}"
            )
        # fp32 for the logits: -inf and large weights must not meet bf16 rounding
        v = video_features.float()
        t = text_features.float()
        logits_v2t = logit_scale * v @ t.T
        logits_t2v = logit_scale * t @ v.T
        w = sentiment_weights(sentiment_logits, self.beta, self.kl_direction)
        if self.beta > 0:
            logits_v2t = logits_v2t - w
            logits_t2v = logits_t2v - w
        labels = torch.arange(n, device=v.device)
        return (F.cross_entropy(logits_v2t, labels) + F.cross_entropy(logits_t2v, labels)) / 2
