"""EmotionCLIP pre-training (appendix B.2): the clip loader, the paper's and the
authors' code's recipes, AMP + DDP, atomic checkpoints with exact resume.
No Prefect here (`flows/pretrain.py` orchestrates).

    from emotionclip.training import make_config, train
    train(make_config("paper", manifests="data/manifests", out_dir="runs/x"))
"""

from __future__ import annotations

from emotionclip.training.ablations import ABLATIONS, Ablation, apply_encoder_setup, get_ablation, trainable_parts
from emotionclip.training.config import PRESETS, TrainConfig, make_config
from emotionclip.training.dataset import ClipDataset, sample_frame_indices
from emotionclip.training.errors import BadBatchError, TrainingInputError
from emotionclip.training.loop import TrainResult, build_dataset, build_model, train
from emotionclip.training.optim import build_optimizer, build_scheduler, param_groups
from emotionclip.training.sampler import ResumableSampler

__all__ = [
    "ABLATIONS", "Ablation", "apply_encoder_setup", "get_ablation", "trainable_parts",
    "PRESETS", "TrainConfig", "make_config", "ClipDataset", "sample_frame_indices", "TrainResult",
    "build_dataset", "build_model", "train", "build_optimizer", "build_scheduler", "param_groups",
    "ResumableSampler", "TrainingInputError", "BadBatchError",
]
