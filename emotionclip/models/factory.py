"""Building the OpenCLIP backbone: the tiny test config, pretrained weights, offline errors.

The tiny config `emotionclip-tiny-vit` is registered in OpenCLIP's own model
registry (so `open_clip.create_model("emotionclip-tiny-vit")` works offline)
and has the paper backbone's geometry (224 px, patch 32, 7x7 grid) at a tiny
width, so the same transforms and code paths serve both profiles.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from emotionclip.core.errors import ModelNotAvailable

TINY_MODEL_NAME = "emotionclip-tiny-vit"
_CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_model_configs() -> None:
    """Add our OpenCLIP model configs (the tiny one) to OpenCLIP's registry. Idempotent."""
    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


register_model_configs()


def _looks_like_file(ref: str) -> bool:
    return os.sep in ref or ref.endswith((".bin", ".pt", ".pth", ".safetensors"))


def create_openclip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> nn.Module:
    """Build an OpenCLIP model by config name with optional weights (a tag such as
    `laion2b_e16` or a local weights file). Missing weights raise ModelNotAvailable
    with the way to fetch them; an unknown name or tag raises ValueError."""
    register_model_configs()
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"unknown OpenCLIP model {name!r}; known: {', '.join(open_clip.list_models()[:20])}, ...")
    if pretrained:
        if _looks_like_file(pretrained):
            if not Path(pretrained).is_file():
                raise ModelNotAvailable(
                    f"OpenCLIP weights file {pretrained!r} for {name} does not exist. Point the catalog's "
                    f"clip_pretrained at a downloaded open_clip_pytorch_model.bin / .safetensors file."
                )
        elif not open_clip.get_pretrained_cfg(name, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"unknown pretrained tag {pretrained!r} for OpenCLIP {name}; known tags: {tags}")
    try:
        # weights_only=True: the weights come from outside this project.
        model = open_clip.create_model(
            name, pretrained=pretrained, device=device, cache_dir=cache_dir, weights_only=True
        )
    except RuntimeError as err:
        if pretrained and not _looks_like_file(pretrained):
            raise ModelNotAvailable(
                f"OpenCLIP weights {name}/{pretrained} are not in the local cache and cannot be downloaded "
                f"here ({err}). On a machine with internet run "
                f"`python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{pretrained}')\"` "
                f"and copy the Hugging Face cache (HF_HOME) over, or set the catalog's clip_pretrained to the "
                f"downloaded weights file."
            ) from err
        raise
    model.emotionclip_name = name  # remembered so checkpoints can rebuild the architecture
    return model


@functools.lru_cache(maxsize=4)
def get_tokenizer(name: str | None, context_length: int = 77) -> Any:
    """OpenCLIP tokenizer for a model name (the BPE vocab ships inside open_clip: works offline).
    OpenCLIP truncates long captions to the context and puts the end-of-text token last,
    which the authors' tokenizer did not (their truncation dropped it)."""
    register_model_configs()
    if name:
        return open_clip.get_tokenizer(name, context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length)
