"""Training configuration: one pydantic model, two named presets.

`paper` follows the EmotionCLIP paper (CVPR 2023; appendix B.2 "Training
Details", eq. 5-7); `official-code` follows what the authors' public code
actually runs (github.com/Xeaver/EmotionCLIP, `src/options.py` + `main.py`).
Every value says where it comes from; docs/paper-provenance.md tabulates them.
`make_config(preset, **overrides)` builds a validated config; the encoder
ablations of Tables 1 and 3 are named override sets in
`emotionclip.training.ablations`.

Values depend on the model profile where the paper's would not fit it
(`_PROFILE_VALUES`): `profile="tiny"` (the demo's random-weight models on the
sample corpus, ~80 clips) trains 2 epochs of batch 16 instead of 25 epochs of
128, without warm-up, at a from-scratch learning rate (`TINY_LR`) and logging
every step. They apply after the preset and before the ablation and the overrides, so
an explicit `--set batch_size=...` still wins. DataLoader workers default to the
cores this process may use, at most the authors' 8 (`default_num_workers`).

Every run writes its config into its output folder as `train_config.json`
(`write_config`; torchrun's ranks read it back with `read_config`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emotionclip.training.ablations import get_ablation

Preset = Literal["paper", "official-code"]
PRESETS: tuple[str, ...] = ("paper", "official-code")

# The run's config in its output folder (written by every run; torchrun's ranks read it).
CONFIG_FILE = "train_config.json"

# The logit scale (log of the inverse temperature) is clamped to [0, ln 100]
# after every step (CLIP paper; the authors' trainer does the same).
LOGIT_SCALE_MAX = math.log(100.0)

# The authors' code: train_loader_workers = 8 (src/options.py), the cap of the default.
MAX_DEFAULT_WORKERS = 8


def compile_enabled(setting: bool | str, device: Any) -> bool:
    """`TrainConfig.compile` for a run on `device`: "auto" is on for CUDA only."""
    if setting == "auto":
        return str(getattr(device, "type", device)).startswith("cuda")
    return bool(setting)


def default_num_workers() -> int:
    """DataLoader worker processes: the cores this process may use, at most 8 (more
    workers than cores only compete for them; torch warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's CPU set, where the OS has one
    except AttributeError:
        cores = os.cpu_count() or 1
    return min(MAX_DEFAULT_WORKERS, cores)


class TrainConfig(BaseModel):
    """Everything `emotionclip.training.train` needs. Defaults = the `paper` preset."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: Preset = "paper"
    ablation: str | None = None  # a named row of Table 1 / Table 3 (emotionclip.training.ABLATIONS), applied by make_config

    # -- data -------------------------------------------------------------
    manifests: str = ""  # a manifest Parquet file, a folder of shards, or an fsspec URL
    out_dir: str = "runs/pretrain"  # local folder: checkpoints, metrics.jsonl, TensorBoard
    catalog: str | None = None  # catalog file (default: data_catalog.yaml / $EMOTIONCLIP_CATALOG)
    profile: str | None = None  # model profile of the catalog (paper | tiny)
    data_root: str | None = None  # override the catalog's data root (where the frame stores live)
    num_frames: int = Field(8, ge=1)  # appendix B.2: 8 frames randomly sampled per clip and iteration
    image_size: int = Field(224, ge=16)  # appendix B.2: 224x224 random crops
    resize: int = Field(256, ge=16)  # frames are stored at a 256 smaller edge (section 3.1 pipeline), then cropped
    box_conf: float = Field(0.5, ge=0, le=1)  # authors' loader: person boxes with conf > 0.5
    num_workers: int = Field(default_factory=default_num_workers, ge=0)  # min(8, cores); authors' code: 8
    pin_memory: bool = True  # on a GPU: batches copied to pinned host memory (DataLoader thread) before upload
    max_replacements: int = Field(16, ge=0)  # unreadable clips: other clips tried before giving up

    # -- model ------------------------------------------------------------
    clip_model: str | None = None  # OpenCLIP config; None = the catalog profile's clip_model
    clip_pretrained: str | None = None  # None = the catalog profile's clip_pretrained
    subject_mode: Literal["sap", "saam", "vanilla"] = "sap"  # paper section 4.2.1: SAP is the standard
    saam_layers: int | None = Field(None, ge=0)  # SAAM in the first N ViT blocks (section 4.2.1); None = all
    temporal: Literal["transformer", "mean"] = "transformer"  # paper: 6-layer transformer (Table 3 "mean" row)
    temporal_dropout: float = Field(0.1, ge=0, lt=1)  # authors' head: PyTorch's layer default 0.1
    # Encoder ablations (Table 3): start from the OpenCLIP weights ("pretrained", appendix B.2)
    # or from a random initialisation ("random", the rows marked "-"); the temporal encoder
    # always starts random. A frozen encoder gets no gradient and sits in no optimizer group
    # (the rows marked with a cross).
    init_text: Literal["pretrained", "random"] = "pretrained"
    init_frame: Literal["pretrained", "random"] = "pretrained"
    freeze_text: bool = False
    freeze_frame: bool = False
    # Image normalisation the frames get. The paper is silent; "clip" is what the OpenCLIP
    # weights were trained with, the authors' code used ImageNet's ("imagenet"). The mean/std
    # used are written into the run's train_config.json and every checkpoint's model config.
    normalization: Literal["clip", "imagenet"] = "clip"

    # -- loss ---------------------------------------------------------------
    # The paper gives no value for beta (Fig. 6 sweeps it); 10 is the authors' code's
    # loss_reweight_scale. beta = 0 is the plain CLIP InfoNCE loss (Table 1 rows without SNCE).
    beta: float = Field(10.0, ge=0)
    # Eq. 6: w_ij = beta / KL(s_i || s_j) ("paper"); the authors' code computes KL(s_j || s_i)
    # for row i, column j ("code", the official-code preset).
    kl_direction: Literal["code", "paper"] = "paper"

    # -- optimisation -------------------------------------------------------
    epochs: int = Field(25, ge=1)  # appendix B.2 and code: 25 epochs
    batch_size: int = Field(128, ge=1)  # appendix B.2 and code: 128 clips per step (global, all ranks)
    grad_accum_steps: int = Field(1, ge=1)  # micro-batches per optimizer step (loss per micro-batch)
    betas: tuple[float, float] = (0.98, 0.9)  # appendix B.2 and code: AdamW beta1 = 0.98, beta2 = 0.9
    eps: float = 1e-10  # appendix B.2: 1e-10 (code: 1e-6)
    weight_decay: float = 0.1  # appendix B.2 and code: 0.1, decoupled, on weights only (not gains/biases)
    lr_gain_bias: float = 5e-5  # appendix B.2 and code: 5e-5 for the encoders' gains and biases
    lr_encoder: float = 1e-8  # appendix B.2 and code: 1e-8 for the frame and text encoder weights
    # Appendix B.2: "the learning rate of the parameters in the temporal encoder is set to 1e-6":
    # every temporal parameter, weights and gains/biases alike. The authors' code: 1e-8 for
    # its weights (lr_head_rest) and 5e-5 for its gains and biases (official-code preset).
    lr_temporal: float = 1e-6
    lr_temporal_gain_bias: float = 1e-6
    lr_logit_scale: float = 1e-8  # paper silent; code: the encoder-weight lr, no decay
    min_lr: float = 1e-10  # appendix B.2 and code: cosine down to 1e-10
    warmup_steps: int = Field(2500, ge=0)  # appendix B.2: linear warm-up over 2,500 steps (code: 10,000)
    warmup_init_factor: float = Field(0.0, ge=0, le=1)  # appendix B.2 says "linearly warmed up" (from 0, our reading; code: 1e-5 x base lr)
    schedule_unit: Literal["step", "epoch"] = "step"  # appendix B.2: cosine "for the rest of the training", per step (code: per epoch)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 if supported, else fp16 (code: fp16)
    grad_checkpointing: bool = False
    # torch.compile the model: "auto" = on for CUDA, off for CPU (on an H200 it took the ViT-B/32
    # step from 147 to 109 ms, README Benchmarks; on CPU compiling costs more than it saves in a short run).
    # The first step's time (compilation included) is logged as `first_step_s` in metrics.jsonl.
    compile: bool | Literal["auto"] = "auto"
    # torch.compile backend: "inductor" (fused kernels); "aot_eager"/"eager" trace without code generation (debugging)
    compile_backend: str = "inductor"
    logit_scale_max: float = LOGIT_SCALE_MAX

    # -- run control --------------------------------------------------------
    seed: int = 2022  # authors' code: seed 2022 (+ rank)
    max_steps: int | None = Field(None, ge=1)  # stop early (the schedule still spans all epochs)
    ckpt_every_steps: int = Field(1000, ge=1)  # plus one at every epoch end
    # Pruning after every save: the newest `keep_checkpoints` checkpoints are kept, plus the
    # epoch-end ones kept for good: `keep_epoch_checkpoints` True = every epoch end, False = none
    # (epoch ends then age out like step checkpoints), N = the end of every N-th epoch (N, 2N, ...).
    # Default False (our choice): with short epochs, keeping every epoch end grows the disk use with
    # the steps (a checkpoint with its optimizer state: ~47 MB for the tiny model, ~1.8 GB for ViT-B/32).
    keep_checkpoints: int = Field(3, ge=1)
    keep_epoch_checkpoints: bool | int = False
    log_every_steps: int = Field(10, ge=1)
    resume: str | None = None  # "latest", a checkpoint path, or None
    device: str = "auto"  # auto: cuda:LOCAL_RANK when present, else cpu
    dist_timeout_s: int | None = Field(None, ge=1)  # collective timeout; None = torch's default (raise it for long probes)

    # -- in-training linear probe (authors: BoLD every epoch) ------------------
    probe_dataset: str | None = None  # an evaluation benchmark (bold, meld, moviegraphs, emotic, liris); None = off
    probe_root: str | None = None  # the benchmark's folder in its published layout
    probe_every_epochs: int = Field(1, ge=1)
    probe_limit: int | None = Field(None, ge=1)  # first N samples of each split (smoke runs)
    probe_batch_size: int = Field(16, ge=1)
    probe_detect: bool = True  # detect humans (catalog detector) where the benchmark gives no box
    probe_c_mode: Literal["preset", "search"] = "preset"  # authors' fixed C, or searched on validation

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.ablation is not None:
            get_ablation(self.ablation)
        keep = self.keep_epoch_checkpoints
        if not isinstance(keep, bool) and keep < 1:
            raise ValueError(f"keep_epoch_checkpoints must be true, false or a number of epochs >= 1, got {keep}")
        if self.image_size > self.resize:
            raise ValueError(f"image_size {self.image_size} is larger than resize {self.resize}")
        if "://" in self.out_dir:
            # TensorBoard event files and metrics.jsonl are appended to: a local folder
            raise ValueError(f"out_dir must be a local folder, got {self.out_dir!r}")
        if self.probe_dataset:
            from emotionclip.evaluation.datasets import NAMES

            if self.probe_dataset not in NAMES:
                raise ValueError(f"unknown probe_dataset {self.probe_dataset!r}; choose one of {list(NAMES)}")
            if not self.probe_root:
                raise ValueError("probe_dataset needs probe_root (the benchmark's folder)")
        return self


# Values of each preset that differ from the class defaults (= paper).
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "paper": {},
    "official-code": {
        "eps": 1e-6,  # src/options.py: adamw_eps = 1e-6
        "lr_temporal": 1e-8,  # src/options.py: lr_head_rest = 1e-8 (every weight matrix)
        "lr_temporal_gain_bias": 5e-5,  # main.py: the head's gains/biases share lr_gain_bias = 5e-5
        "kl_direction": "code",  # src/loss: KL(s_j || s_i) for row i, column j
        "normalization": "imagenet",  # src/datasets: ImageNet mean/std
        "warmup_steps": 10000,  # src/options.py: warmup_t = 10000 iterations
        "warmup_init_factor": 1e-5,  # src/options.py: warmup_mode auto, warmup_init_factor 1e-5
        "schedule_unit": "epoch",  # main.py: CosineAnnealingLR(T_max=max_epochs) stepped per epoch
        "precision": "fp16",  # src/options.py: precision 'amp' = fp16 autocast + GradScaler
    },
}


# The tiny profile's learning rate for the encoder and temporal weights (our choice, not
# the paper's). The paper's rates (1e-8 for the encoder weights, 1e-6 for the temporal
# encoder) fine-tune pretrained CLIP weights over ~25 epochs; the tiny model starts from
# random weights and the demo (deployments: pretrain/tiny) runs 4 steps, where those rates
# change nothing. 1e-3 is the usual AdamW rate for a small transformer trained from scratch
# (the rate the training tests use). On the sample corpus (79 clips) the demo's 4 steps took
# the loss of a fixed batch of 16 clips from 0.27 to 0.13, where the paper's rates and
# warm-up left it at 0.27 (every group at 1e-4: 0.17, at 3e-3: 0.14). The gains and biases
# keep the paper's rates: raising them to 1e-3 as well gave the same 0.13.
TINY_LR = 1e-3

# Values of a model profile that differ from the preset's (profiles: data_catalog.yaml).
# Only for a profile given explicitly (`profile=` / --profile), not the catalog's default.
_PROFILE_VALUES: dict[str, dict[str, Any]] = {
    "tiny": {
        # The sample corpus keeps ~80 clips (emotionclip/sample.py); one batch of the paper's
        # 128 would not fit, 16 gives 4 steps per epoch.
        "batch_size": 16,
        "epochs": 2,  # a demo run of the code path, a minute on a CPU, not 25 epochs
        # No warm-up: the paper's 2,500 warm-up steps would keep the lr near 0 for all of
        # the demo's few steps (with warmup_init_factor 0 the first step's lr is exactly 0).
        "warmup_steps": 0,
        "lr_encoder": TINY_LR,
        "lr_temporal": TINY_LR,
        # Every step logged: a run of a few steps still draws a loss curve (metrics.jsonl).
        "log_every_steps": 1,
    },
}


def profile_values(profile: str | None) -> dict[str, Any]:
    """The training values `profile` changes (empty for the paper profile or none)."""
    return dict(_PROFILE_VALUES.get(profile or "", {}))


def make_config(preset: str = "paper", ablation: str | None = None, **overrides: Any) -> TrainConfig:
    """The named preset, then the values of the model profile in `overrides["profile"]`
    (`_PROFILE_VALUES`), then the named ablation's values (Table 1 / Table 3), then
    `overrides` (validated)."""
    if preset not in _PRESET_VALUES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    ablated = get_ablation(ablation).overrides if ablation else {}
    by_profile = profile_values(overrides.get("profile"))
    values = {"preset": preset, "ablation": ablation, **_PRESET_VALUES[preset], **by_profile, **ablated, **overrides}
    return TrainConfig(**values)


def run_config(preset: str = "paper", ablation: str | None = None, *, manifests: str | None = None,
               out_dir: str = "runs/pretrain", profile: str | None = None, catalog: str | None = None,
               data_root: str | None = None, resume: str | None = "latest", max_steps: int | None = None,
               overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config of one pre-training run (the `pretrain` flow, the ablation variants):
    `make_config` with `manifests` defaulting to the catalog's manifests folder (what
    build-tv-dataset wrote) and `overrides` (TrainConfig fields) applied last."""
    if not manifests:
        from emotionclip.core.catalog import load_catalog

        manifests = load_catalog(catalog, profile=profile, data_root=data_root).artifact("manifests")
    return make_config(preset, ablation=ablation, **{
        "manifests": manifests, "out_dir": out_dir, "profile": profile, "catalog": catalog,
        "data_root": data_root, "resume": resume, "max_steps": max_steps, **dict(overrides or {}),
    })


def write_config(config: TrainConfig) -> Path:
    """The config as JSON in its output folder, `train_config.json` (atomic: a reader,
    e.g. a torchrun rank, never sees half a file)."""
    from emotionclip.core.io import atomic_write_json

    path = Path(config.out_dir) / CONFIG_FILE
    atomic_write_json(path, config.model_dump(mode="json"))
    return path


def read_config(path: str | os.PathLike) -> TrainConfig:
    return TrainConfig.model_validate(json.loads(Path(path).read_text()))


def config_rows(config: TrainConfig) -> list[dict[str, Any]]:
    """Every field of `config` as {field, value, default}: `default` is the class default,
    i.e. the paper preset's value, so a reader sees what the preset, profile, ablation
    and overrides changed."""
    rows = []
    for name, info in TrainConfig.model_fields.items():
        value = getattr(config, name)
        default = info.get_default(call_default_factory=True)
        rows.append({"field": name, "value": list(value) if isinstance(value, tuple) else value,
                     "default": list(default) if isinstance(default, tuple) else default})
    return rows


def config_markdown(config: TrainConfig) -> str:
    """Every field of `config` as a markdown table (`config_rows`), the values that
    differ from the paper preset's in bold, under a line naming the preset, ablation
    and profile."""
    def cell(value: Any) -> str:
        text = "" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
        return text.replace("|", "\\|")  # a pipe would end the cell

    lines = [f"## Training configuration: preset `{config.preset}`, ablation `{config.ablation or 'none'}`, "
             f"profile `{config.profile or 'catalog default'}`", "",
             f"Every `TrainConfig` field (emotionclip/training/config.py); **bold**: differs from the paper "
             f"preset's value. Also in `{Path(config.out_dir) / CONFIG_FILE}`.", "",
             "| field | value | paper preset |", "|---|---|---|"]
    for row in config_rows(config):
        value, default = cell(row["value"]), cell(row["default"])
        shown = f"**{value}**" if value != default and value else value
        lines.append(f"| {row['field']} | {shown} | {default} |")
    return "\n".join(lines) + "\n"
