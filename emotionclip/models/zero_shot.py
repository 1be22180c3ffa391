"""Zero-shot emotion scoring: compare video features with prompted label embeddings.

The authors' repository announces this but ships it broken; this is the usual
CLIP recipe: embed "a person feeling {label}" (one or several templates, averaged
after normalisation), then softmax over labels of logit_scale * cosine similarity.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from emotionclip.models.model import EmotionCLIP

DEFAULT_TEMPLATE = "a person feeling {}"


@torch.no_grad()
def label_embeddings(
    model: EmotionCLIP, labels: Sequence[str], template: str | Sequence[str] = DEFAULT_TEMPLATE
) -> torch.Tensor:
    """[len(labels), D] L2-normalised text embeddings, averaged over the templates."""
    if not labels:
        raise ValueError("zero-shot needs at least one label")
    templates = [template] if isinstance(template, str) else list(template)
    device = model.logit_scale.device
    per_template = []
    for tpl in templates:
        if "{}" not in tpl:
            raise ValueError(f"template {tpl!r} has no '{{}}' for the label")
        tokens = model.tokenize([tpl.format(label) for label in labels]).to(device)
        per_template.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


@torch.no_grad()
def zero_shot_probs(
    model: EmotionCLIP,
    video: torch.Tensor,
    masks: torch.Tensor | None,
    labels: Sequence[str],
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
) -> torch.Tensor:
    """video [B, T, 3, H, W] (or one clip [T, 3, H, W]) -> probabilities [B, len(labels)]."""
    if video.dim() == 4:
        video = video.unsqueeze(0)
        masks = masks.unsqueeze(0) if masks is not None else None
    text = label_embeddings(model, labels, template)
    v = F.normalize(model.encode_video(video, masks).float(), dim=-1)
    logits = model.logit_scale.exp().float() * v @ text.T
    return logits.softmax(dim=-1)
