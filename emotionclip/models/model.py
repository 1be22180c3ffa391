"""The EmotionCLIP model: subject-aware OpenCLIP frame encoder + temporal encoder + text tower.

The nn.Module only: checkpoints are `emotionclip.models.checkpoint` (`save_checkpoint`,
`load_model`, `load_official_checkpoint`), zero-shot scoring `emotionclip.models.zero_shot`.
Both import this module, never the reverse."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emotionclip.models import frame_encoder as fe
from emotionclip.models.factory import create_openclip, get_tokenizer
from emotionclip.models.fused import use_fused_attention
from emotionclip.models.temporal import (
    DEFAULT_DROPOUT,
    DEFAULT_HEADS,
    DEFAULT_LAYERS,
    DEFAULT_MAX_FRAMES,
    TemporalEncoder,
)
from emotionclip.models.transforms import ClipPreprocessor, PreprocessConfig


@dataclass
class EmotionCLIPConfig:
    """Everything needed to rebuild the architecture (stored in checkpoints)."""

    clip_model: str | None = None  # OpenCLIP config name, e.g. "ViT-B-32" or "emotionclip-tiny-vit"
    clip_pretrained: str | None = None  # where the initial weights came from (informational)
    subject_mode: str = "sap"  # paper's choice (section 4.2.1: SAP is the standard implementation)
    # SAAM only: the eq. 4 mask is applied in the first `saam_layers` ViT blocks ("up to a
    # certain layer", section 4.2.1); None = every block.
    saam_layers: int | None = None
    temporal: str = "transformer"
    max_frames: int = DEFAULT_MAX_FRAMES
    temporal_layers: int = DEFAULT_LAYERS
    temporal_heads: int = DEFAULT_HEADS
    temporal_dropout: float = DEFAULT_DROPOUT
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmotionCLIPConfig":
        d = dict(d)
        d["preprocess"] = PreprocessConfig.from_dict(d.get("preprocess") or {})
        return cls(**d)


class EmotionCLIP(nn.Module):
    """EmotionCLIP (CVPR 2023). Submodules: `clip` (the OpenCLIP model: image tower,
    text tower, logit_scale) and `temporal` (the temporal encoder)."""

    def __init__(self, clip: nn.Module, config: EmotionCLIPConfig):
        super().__init__()
        fe.check_visual(clip.visual, config.subject_mode)
        if config.saam_layers is not None and not 0 <= config.saam_layers <= fe.num_layers(clip.visual):
            raise ValueError(f"saam_layers must be in [0, {fe.num_layers(clip.visual)}] (the ViT's blocks), "
                             f"got {config.saam_layers}")
        self.config = config
        self.clip = clip
        self.embed_dim = int(clip.visual.output_dim)
        # SAAM's learnable human token (section 3.2); sap and vanilla stay parameter-free,
        # so the authors' (SAP) checkpoint loads with strict key matching.
        self.hmn_token: nn.Parameter | None = None
        if config.subject_mode == "saam":
            self.hmn_token = nn.Parameter(fe.init_hmn_token(clip.visual))
        self.temporal = TemporalEncoder(
            self.embed_dim,
            mode=config.temporal,  # type: ignore[arg-type]
            max_frames=config.max_frames,
            layers=config.temporal_layers,
            heads=config.temporal_heads,
            dropout=config.temporal_dropout,
        )
        # scaled_dot_product_attention in every attention layer (emotionclip.models.fused):
        # the same parameters, the same results up to float rounding
        use_fused_attention(self.clip)
        use_fused_attention(self.temporal)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_openclip(
        cls,
        model: str | nn.Module,
        pretrained: str | None = None,
        *,
        subject_mode: str = "sap",
        saam_layers: int | None = None,
        temporal: str = "transformer",
        max_frames: int = DEFAULT_MAX_FRAMES,
        temporal_layers: int = DEFAULT_LAYERS,
        temporal_heads: int = DEFAULT_HEADS,
        temporal_dropout: float = DEFAULT_DROPOUT,
        preprocess: PreprocessConfig | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        clip_model_name: str | None = None,
    ) -> "EmotionCLIP":
        """From an OpenCLIP model name (+ optional pretrained tag or weights file) or a
        built OpenCLIP model. Offline without cached weights: ModelNotAvailable.
        For a built model, `clip_model_name` (its OpenCLIP config name) lets checkpoints
        rebuild it; models made by `create_openclip` remember their name."""
        if isinstance(model, str):
            clip = create_openclip(model, pretrained, device=device, cache_dir=cache_dir)
            name = model
        else:
            if pretrained is not None:
                raise ValueError("pretrained applies to a model name, not to an already built model")
            clip = model
            name = clip_model_name or getattr(model, "emotionclip_name", None)
        if preprocess is None:
            size = clip.visual.image_size
            crop = size if isinstance(size, int) else size[0]
            preprocess = PreprocessConfig(crop=crop, resize=max(crop, PreprocessConfig.resize))
        cfg = EmotionCLIPConfig(
            clip_model=name,
            clip_pretrained=pretrained,
            subject_mode=subject_mode,
            saam_layers=saam_layers,
            temporal=temporal,
            max_frames=max_frames,
            temporal_layers=temporal_layers,
            temporal_heads=temporal_heads,
            temporal_dropout=temporal_dropout,
            preprocess=preprocess,
        )
        return cls(clip, cfg).to(device)

    @classmethod
    def from_config(cls, config: EmotionCLIPConfig | dict[str, Any], device: str | torch.device = "cpu") -> "EmotionCLIP":
        """Random-initialised model of a config (weights come from a checkpoint after)."""
        if isinstance(config, dict):
            config = EmotionCLIPConfig.from_dict(config)
        if not config.clip_model:
            raise ValueError("config.clip_model is not set: cannot rebuild the OpenCLIP architecture")
        clip = create_openclip(config.clip_model, None, device=device)
        return cls(clip, config).to(device)

    # -- encoders -------------------------------------------------------------
    @property
    def subject_mode(self) -> str:
        return self.config.subject_mode

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learned log-scale (multiply logits by its exp)."""
        return self.clip.logit_scale

    @property
    def preprocess_cfg(self) -> PreprocessConfig:
        return self.config.preprocess

    def preprocessor(self, train: bool = False) -> ClipPreprocessor:
        """Frames + boxes -> model inputs, with this model's normalisation."""
        return ClipPreprocessor(self.config.preprocess, train=train)

    def encode_frames(
        self, frames: torch.Tensor, masks: torch.Tensor | None = None, return_attention: bool | Sequence[int] = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """frames [N, 3, H, W], subject masks [N, H, W] (or None: no subject) -> [N, D].

        return_attention: True (every block) or 0-based block indices: also return
        {block: attention weights [N, heads, L, L]} over the tokens [CLS, patches, HMN]
        (see `emotionclip.models.attention_maps` for per-patch HMN/CLS maps)."""
        layers: Sequence[int] = ()
        if return_attention is True:
            layers = range(fe.num_layers(self.clip.visual))
        elif return_attention:
            layers = list(return_attention)
        return fe.encode_frames(
            self.clip.visual, frames, masks, self.config.subject_mode,  # type: ignore[arg-type]
            hmn_token=self.hmn_token, saam_layers=self.config.saam_layers, attention_layers=tuple(layers),
        )

    def encode_video(self, frames: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """frames [B, T, 3, H, W], masks [B, T, H, W] (or None) -> video features [B, D] (not normalised)."""
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        flat_masks = masks.reshape(b * t, *masks.shape[2:]) if masks is not None else None
        x = self.encode_frames(frames.reshape(b * t, *frames.shape[2:]), flat_masks)
        return self.temporal(x.reshape(b, t, -1))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, context] -> text features [B, D] (not normalised)."""
        return self.clip.encode_text(tokens)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """OpenCLIP tokenizer (context 77; a truncated caption still ends with end-of-text)."""
        tok = get_tokenizer(self.config.clip_model, int(getattr(self.clip, "context_length", 77)))
        return tok([texts] if isinstance(texts, str) else list(texts))

    def forward(
        self, frames: torch.Tensor, masks: torch.Tensor | None, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (video features [B, D], text features [B, D], both L2-normalised; logit_scale.exp())."""
        v = F.normalize(self.encode_video(frames, masks), dim=-1)
        t = F.normalize(self.encode_text(tokens), dim=-1)
        return v, t, self.logit_scale.exp()
