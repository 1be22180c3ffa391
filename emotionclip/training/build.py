"""What a run is built from its config: precision, catalog, model and clip dataset."""

from __future__ import annotations

from typing import Any

import torch

from emotionclip.training.ablations import apply_encoder_setup
from emotionclip.training.config import TrainConfig
from emotionclip.training.dataset import ClipDataset


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the GPU supports it, else fp16 (+ grad scaler), fp32 on
    CPU; an explicit bf16/fp16 is honoured on CPU too (slow there, but it runs
    the same mixed-precision and grad-scaler code as a GPU)."""
    if device.type != "cuda":
        return precision if precision in ("bf16", "fp16") else "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def load_catalog_for(config: TrainConfig) -> Any:
    from emotionclip.core.catalog import load_catalog

    return load_catalog(config.catalog, profile=config.profile, data_root=config.data_root)


class FramesLocation:
    """Picklable video_id -> frame store location (for DataLoader workers)."""

    def __init__(self, catalog: Any):
        self.catalog = catalog

    def __call__(self, video_id: str) -> str:
        return self.catalog.artifact("frames", video_id)


def build_model(config: TrainConfig, catalog: Any, device: torch.device) -> Any:
    """EmotionCLIP from the config (or the catalog profile's OpenCLIP model), with the
    config's encoder initialisation and freezing (Table 3) and image normalisation."""
    from emotionclip.models import EmotionCLIP, PreprocessConfig
    from emotionclip.models.transforms import NORMALIZATIONS

    name = config.clip_model or catalog.models.clip_model
    pretrained = config.clip_pretrained
    if pretrained is None and config.clip_model is None and catalog.models.clip_pretrained:
        pretrained = catalog.model_ref("clip_pretrained")
    if config.init_text == "random" and config.init_frame == "random":
        pretrained = None  # nothing of the OpenCLIP weights is used
    mean, std = NORMALIZATIONS[config.normalization]
    preprocess = PreprocessConfig(resize=config.resize, crop=config.image_size, box_conf_threshold=config.box_conf,
                                  mean=mean, std=std)
    model = EmotionCLIP.from_openclip(
        name, pretrained, subject_mode=config.subject_mode, saam_layers=config.saam_layers,
        temporal=config.temporal, max_frames=config.num_frames, temporal_dropout=config.temporal_dropout,
        preprocess=preprocess,
    )
    apply_encoder_setup(model, config)
    if config.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    return model.to(device)


def build_dataset(config: TrainConfig, catalog: Any, model: Any, train: bool = True) -> ClipDataset:
    from emotionclip.core.manifest_store import read_manifests
    from emotionclip.models import get_tokenizer

    manifest = read_manifests(config.manifests)
    return ClipDataset(
        manifest,
        FramesLocation(catalog),
        # the tokenizer object, not model.tokenize: workers must not receive the model
        get_tokenizer(model.config.clip_model, int(getattr(model.clip, "context_length", 77))),
        preprocess=model.preprocess_cfg,
        train=train,
        num_frames=config.num_frames,
        seed=config.seed,
        max_replacements=config.max_replacements,
    )
