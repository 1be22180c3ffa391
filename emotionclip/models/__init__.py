"""EmotionCLIP model library (CVPR 2023): subject-aware frame encoder (SAP, SAAM,
vanilla) on OpenCLIP, temporal encoder, text tower, sentiment-guided loss,
checkpoints, preprocessing. Usable without Prefect:

    from emotionclip.models import EmotionCLIP, SentimentGuidedLoss, load_model, save_checkpoint
    model = EmotionCLIP.from_openclip("ViT-B-32", "laion2b_e16", subject_mode="sap")
    save_checkpoint("model.pt", model)
    model = load_model("model.pt")
"""

from __future__ import annotations

from typing import Any

from emotionclip.models.attention import AttentionMaps, attention_maps
from emotionclip.models.checkpoint import (
    load_checkpoint,
    load_model,
    load_official_checkpoint,
    official_to_state_dict,
    save_checkpoint,
    state_dict_to_official,
)
from emotionclip.models.distributed import gather_features
from emotionclip.models.factory import TINY_MODEL_NAME, create_openclip, get_tokenizer, register_model_configs
from emotionclip.models.frame_encoder import (
    SUBJECT_MODES,
    encode_frames,
    saam_attention_mask,
    subject_patch_coverage,
    subject_token,
)
from emotionclip.models.fused import FusedMultiheadAttention, use_fused_attention
from emotionclip.models.loss import SentimentGuidedLoss, pairwise_kl, sentiment_weights
from emotionclip.models.model import EmotionCLIP, EmotionCLIPConfig
from emotionclip.models.temporal import TemporalEncoder
from emotionclip.models.transforms import (
    ClipPreprocessor,
    PreprocessConfig,
    boxes_per_frame,
    boxes_to_mask,
    decode_frame,
    normalize_frames,
)
from emotionclip.models.zero_shot import label_embeddings, zero_shot_probs


def from_catalog_profile(clip_model: str, clip_pretrained: str | None = None, **kwargs: Any) -> EmotionCLIP:
    """EmotionCLIP for a catalog profile's `clip_model` / `clip_pretrained` (a tag or a
    weights file). kwargs go to `EmotionCLIP.from_openclip` (subject_mode, temporal, ...)."""
    return EmotionCLIP.from_openclip(clip_model, clip_pretrained, **kwargs)


def from_catalog(catalog: Any, **kwargs: Any) -> EmotionCLIP:
    """EmotionCLIP for the catalog's active profile; a relative clip_pretrained that
    exists under models_dir resolves to that file."""
    pretrained = catalog.model_ref("clip_pretrained") if catalog.models.clip_pretrained else None
    return from_catalog_profile(catalog.models.clip_model, pretrained, **kwargs)


__all__ = [
    "EmotionCLIP",
    "EmotionCLIPConfig",
    "SentimentGuidedLoss",
    "TemporalEncoder",
    "FusedMultiheadAttention",
    "use_fused_attention",
    "PreprocessConfig",
    "ClipPreprocessor",
    "TINY_MODEL_NAME",
    "SUBJECT_MODES",
    "subject_patch_coverage",
    "subject_token",
    "saam_attention_mask",
    "attention_maps",
    "AttentionMaps",
    "encode_frames",
    "sentiment_weights",
    "pairwise_kl",
    "gather_features",
    "boxes_to_mask",
    "boxes_per_frame",
    "decode_frame",
    "normalize_frames",
    "create_openclip",
    "get_tokenizer",
    "register_model_configs",
    "from_catalog_profile",
    "from_catalog",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_official_checkpoint",
    "official_to_state_dict",
    "state_dict_to_official",
    "label_embeddings",
    "zero_shot_probs",
]
